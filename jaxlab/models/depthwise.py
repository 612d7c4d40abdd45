"""Depthwise convolution, the one layer behind ConvNeXt's k x k conv and the long-convolution
LM's short causal conv: a kernel [*taps, C] and an optional bias [C] with ParamMeta, applied per
channel through pallas_kernels.depthwise_conv2d ("SAME") or depthwise_conv1d (causal or "SAME")."""

import math

import flax.linen as nn
import jax

import pallas_kernels
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import make_param, scale_param
from jaxlab.param.roles import BIAS, INPUT
from jaxlab.param.unit_scaling import scaled_op


class DepthwiseConv(nn.Module):
  """y[..., c] = sum over the window of w[..., c] x[..., c] (+ b[c]), x [B, *spatial, C].

  taps: (k, k) for a 2-D "SAME" conv (x [B, H, W, C]) or (k,) for a 1-D conv (x [B, L, C]),
  causal (y[t] = sum_{j<k} w[j] x[t - j]) or "SAME". The kernel [*taps, C] is INPUT-role
  (vector-like: fan_in = prod(taps) stays fixed as the width grows, fan_out = C) and runs
  through scaled_op with the parametrization's op scales (batch = output positions); the bias
  [C] is BIAS-role. channel_axis: the channels' logical axis name (sharding rules).
  """

  taps: tuple[int, ...]
  causal: bool = False
  use_bias: bool = True
  channel_axis: str = "conv_out"
  implementation: str | None = None
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    taps, impl = tuple(self.taps), self.implementation
    if len(taps) == 2:
      axes = ("kernel_h", "kernel_w", self.channel_axis)
      op = lambda a, w: pallas_kernels.depthwise_conv2d(  # noqa: E731
          a, w, padding="SAME", implementation=impl)
    else:
      axes = ("kernel_w", self.channel_axis)
      op = lambda a, w: pallas_kernels.depthwise_conv1d(  # noqa: E731
          a, w, causal=self.causal, implementation=impl)
    ctx, C = self.ctx, x.shape[-1]
    p, dtype, fan_in = ctx.parametrization, ctx.dtype, math.prod(taps)
    kernel = make_param(self, "kernel", (*taps, C), names=axes, role=INPUT, fan_in=fan_in,
                        fan_out=C, ctx=ctx)
    batch = x.size // C
    y = scaled_op(x.astype(dtype), kernel.astype(dtype), op,
                  *p.op_scales(INPUT, fan_in, C, batch))
    if self.use_bias:
      bias = make_param(self, "bias", (C,), names=(self.channel_axis,), role=BIAS, fan_in=1,
                        fan_out=C, ctx=ctx)
      y = y + scale_param(bias.astype(dtype), p.op_scales(BIAS, 1, C, batch))
    return y
