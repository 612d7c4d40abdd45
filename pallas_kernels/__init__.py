"""Accelerator kernels (Pallas) with XLA references, one subpackage per op:
reference.py (XLA), an O(N)-memory XLA path where one exists, pallas.py (kernel + custom_vjp),
api.py (dispatch by `implementation`).

  pallas_kernels.attention(q, k, v, *, causal, segment_ids, window, softcap, implementation)
      -- flash_attention/
"""

from pallas_kernels.flash_attention import IMPLEMENTATIONS, attention, default_implementation

__all__ = ["IMPLEMENTATIONS", "attention", "default_implementation"]
