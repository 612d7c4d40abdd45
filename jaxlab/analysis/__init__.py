"""Analysis tools: coordinate checks (more: LR sweeps, per-layer statistics)."""

from jaxlab.analysis.coord_check import activation_scales, coord_check
