"""LayerNorm / RMSNorm over the last axis with optional LayerNorm Scaling (1/sqrt(layer)), as XLA
reference and Pallas kernels behind `pallas_kernels.fused_norm` (= api.fused_norm)."""

from pallas_kernels.fused_norm.api import IMPLEMENTATIONS, KINDS, default_implementation, fused_norm

__all__ = ["IMPLEMENTATIONS", "KINDS", "default_implementation", "fused_norm"]
