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
  pallas_kernels.fused_norm(x, scale, bias, *, kind, eps, layer_index, implementation)
      -- fused_norm/ (LayerNorm / RMSNorm, optional LayerNorm Scaling 1/sqrt(layer))
  pallas_kernels.int8_matmul(x_q, w_q, x_scale, w_scale, *, implementation)
  pallas_kernels.quantized_matmul(x, w, *, implementation)
      -- int8_matmul/ (int32 accumulation, per-token x per-channel scales; STE backward)
"""

from pallas_kernels.flash_attention import IMPLEMENTATIONS, attention, default_implementation
from pallas_kernels.depthwise_conv import depthwise_conv1d, depthwise_conv2d
from pallas_kernels.fused_norm import fused_norm
from pallas_kernels.int8_matmul import int8_matmul, quantized_matmul
from pallas_kernels.long_convolution import SGConvKernel, long_conv

__all__ = ["IMPLEMENTATIONS", "attention", "default_implementation",
           "depthwise_conv1d", "depthwise_conv2d", "fused_norm", "int8_matmul", "long_conv",
           "quantized_matmul", "SGConvKernel"]
