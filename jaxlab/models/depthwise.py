"""The body shared by the depthwise conv layers (convnext.DepthwiseConv2D, longconv.ShortConv):
a kernel [*taps, C] and an optional bias [C] with ParamMeta, applied through a Pallas op."""

import math
from typing import Callable

import flax.linen as nn
import jax

from jaxlab.models.layers import make_param, scale_param
from jaxlab.param.roles import BIAS, INPUT
from jaxlab.param.unit_scaling import scaled_op


def depthwise_conv(module: nn.Module, x: jax.Array, op: Callable, taps: tuple[int, ...],
                   axes: tuple[str, ...], use_bias: bool) -> jax.Array:
  """op(x, kernel) (+ bias) inside `module`'s compact __call__, in module.ctx.dtype.

  kernel [*taps, C] (C = x.shape[-1]; logical axes `axes`, the last one the channels') is
  INPUT-role with fan_in = prod(taps), fan_out = C, and op runs through scaled_op with the
  module's parametrization op scales (batch = output positions); bias [C] is BIAS-role.
  """
  ctx, C = module.ctx, x.shape[-1]
  p, dtype = ctx.parametrization, ctx.dtype
  fan_in = math.prod(taps)
  kernel = make_param(module, "kernel", (*taps, C), names=axes, role=INPUT, fan_in=fan_in,
                      fan_out=C, ctx=ctx)
  batch = x.size // C
  y = scaled_op(x.astype(dtype), kernel.astype(dtype), op, *p.op_scales(INPUT, fan_in, C, batch))
  if use_bias:
    bias = make_param(module, "bias", (C,), names=axes[-1:], role=BIAS, fan_in=1, fan_out=C,
                      ctx=ctx)
    y = y + scale_param(bias.astype(dtype), p.op_scales(BIAS, 1, C, batch))
  return y
