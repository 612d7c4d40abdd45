"""Parametrizations: SP, NTK, per-layer SP (Everett et al.), muP, depth-muP/CompleteP, u-muP."""

from jaxlab.param import roles
from jaxlab.param.base import (NTK, SP, CompleteP, DepthMuP, MuP, OpScales, Parametrization,
                               PerLayerSP)
from jaxlab.param.meta import ParamInfo, ParamMeta, param_info, unbox
from jaxlab.param.registry import describe, get, names, options
from jaxlab.param.umup import UMuP
