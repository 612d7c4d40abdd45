"""Analysis tools: coordinate checks and vmapped learning-rate sweeps."""

from jaxlab.analysis.coord_check import activation_scales, coord_check
from jaxlab.analysis.lr_sweep import lr_sweep, make_sweep, stack_batches
