"""Softmax attention: XLA reference, XLA chunked (O(seq) memory) and Pallas FlashAttention
kernels behind one dispatching function, `pallas_kernels.attention` (= api.attention)."""

from pallas_kernels.flash_attention.api import IMPLEMENTATIONS, attention, default_implementation

__all__ = ["IMPLEMENTATIONS", "attention", "default_implementation"]
