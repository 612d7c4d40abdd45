"""Parametrizations (SP now; NTK, muP, depth-muP, u-muP in the parametrization issue)."""

from jaxlab.param import roles
from jaxlab.param.base import SP, DepthMuP, MuP, Parametrization, get
from jaxlab.param.meta import ParamInfo, ParamMeta, param_info, unbox
