"""Depth and variance control: norm placements, residual scaling, weight rescaling, init schemes."""

from jaxlab.depth import param_transforms, rescaling
from jaxlab.depth.param_transforms import (hyperspherical_init, hyperspherical_projection,
                                           weight_norm)
from jaxlab.depth.rescaling import (layer_index_stds, lir_rescale, target_variance_rescaling,
                                    tvr_targets)
from jaxlab.depth import init_schemes, norm_conversion, placement
from jaxlab.depth.norm_conversion import to_pre_crmsnorm, to_pre_rmsnorm
from jaxlab.depth.placement import PLACEMENTS, BlockNorms, block_norms
