"""Accelerator kernels (Pallas) with XLA references, one subpackage per op:
reference.py (XLA), an O(N)-memory XLA path where one exists, pallas.py (kernel + custom_vjp),
api.py (dispatch by `implementation`).

  pallas_kernels.attention(q, k, v, *, causal, segment_ids, window, softcap, implementation)
      -- flash_attention/
  pallas_kernels.depthwise_conv1d(x, w, *, causal, implementation)
  pallas_kernels.depthwise_conv2d(x, w, *, padding, implementation)
      -- depthwise_conv/
  pallas_kernels.long_conv(u, k, *, implementation), pallas_kernels.SGConvKernel
      -- long_convolution/
"""

from pallas_kernels.flash_attention import IMPLEMENTATIONS, attention, default_implementation
from pallas_kernels.depthwise_conv import depthwise_conv1d, depthwise_conv2d
from pallas_kernels.long_convolution import SGConvKernel, long_conv

__all__ = ["IMPLEMENTATIONS", "attention", "default_implementation",
           "depthwise_conv1d", "depthwise_conv2d", "long_conv", "SGConvKernel"]
