"""Normalisation layers and learned scalar gains/biases (jaxlab.models.layers' contract: every
parameter through make_param with its role and fans; gains are NORM-role with fan_in = fan_out =
features, biases BIAS-role with fan_in = 1).

LayerNorm and RMSNorm run through pallas_kernels.fused_norm, with the gain and bias already
scaled by the parametrization (scale_param): on a TPU / GPU backend with implementation None (the
fused kernel), on a CPU backend with "xla" (the plain-jnp formulas with their backward written
out, pallas_kernels/fused_norm/xla.py), not None: None wraps the XLA path in
lax.platform_dependent, whose conditional changes XLA's fusions and so the last bits of the
gradients. CRMSNorm's implied coordinate has no kernel form: it stays plain jnp.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels.fused_norm.api import default_implementation

from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import make_param, scale_param
from jaxlab.param.roles import BIAS, NORM


class _Norm(nn.Module):
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True
  axis_name: str = "embed"
  ctx: LayerContext = DEFAULT

  def _gain_bias(self, d: int, batch: int) -> tuple[jax.Array | None, jax.Array | None]:
    """(gain, bias) [d] multiplied by their op scales; None where unused."""
    p = self.ctx.parametrization
    gain = bias = None
    if self.use_scale:
      gain = make_param(self, "scale", (d,), names=(self.axis_name,), role=NORM, fan_in=d,
                        fan_out=d, ctx=self.ctx)
      gain = scale_param(gain, p.op_scales(NORM, d, d, batch))
    if self.use_bias:
      bias = make_param(self, "bias", (d,), names=(self.axis_name,), role=BIAS, fan_in=1,
                        fan_out=d, ctx=self.ctx)
      bias = scale_param(bias, p.op_scales(BIAS, 1, d, batch))
    return gain, bias

  def _fused(self, x: jax.Array, kind: str) -> jax.Array:
    """pallas_kernels.fused_norm of x with this module's gain / bias (a missing gain is 1,
    exact), in ctx.dtype; x goes in as float32 unless it already has ctx.dtype bfloat16."""
    d = x.shape[-1]
    gain, bias = self._gain_bias(d, x.size // d)
    if gain is None:
      gain = jnp.ones((d,), jnp.float32)
    if not (x.dtype == self.ctx.dtype and x.dtype in (jnp.float32, jnp.bfloat16)):
      x = x.astype(jnp.float32)
    impl = None if default_implementation() == "pallas" else "xla"
    y = pallas_kernels.fused_norm(x, gain, bias, kind=kind, eps=self.epsilon, implementation=impl)
    return y.astype(self.ctx.dtype)


class LayerNorm(_Norm):
  """(x - mean) / sqrt(var + eps) * g + b over the last axis (Ba et al. 2016), in f32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._fused(x, "layernorm")


class RMSNorm(_Norm):
  """x / sqrt(mean(x^2) + eps) * g over the last axis (Zhang & Sennrich 2019), in f32."""

  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._fused(x, "rmsnorm")


class CRMSNorm(_Norm):
  """Compressed RMSNorm (Jiang et al. 2023, "Pre-RMSNorm and Pre-CRMSNorm Transformers", Eq. 9):
  x [..., d-1] holds the first d-1 coordinates of a zero-mean d-vector whose last coordinate is
  -sum(x); returns x / sqrt((sum(x^2) + sum(x)^2) / d + eps), that vector's RMSNorm without its
  implied last coordinate. No gain or bias by default: they are folded into the next linear
  layer (jaxlab.depth.norm_conversion), as an elementwise gain cannot act on the implied one.
  """

  use_scale: bool = False
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    d = x.shape[-1] + 1
    ss = jnp.sum(jnp.square(x), axis=-1, keepdims=True) + jnp.square(
        jnp.sum(x, axis=-1, keepdims=True))
    y = x * jax.lax.rsqrt(ss / d + self.epsilon)
    gain, bias = self._gain_bias(y.shape[-1], y.size // y.shape[-1])
    if gain is not None:
      y = y * gain
    if bias is not None:
      y = y + bias
    return y.astype(self.ctx.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "crmsnorm": CRMSNorm}


def norm_class(name: str) -> type[_Norm]:
  if name not in NORMS:
    raise UserError(f"unknown norm {name!r} (config.model.norm); valid: {', '.join(NORMS)}")
  return NORMS[name]


class ScalarGain(nn.Module):
  """x * g for one learned scalar g (role NORM, fan 1) initialised to `init_value`: ReZero /
  SkipInit branch gains (init 0; Bachlechner et al. 2020, De & Smith 2020), Fixup's branch
  multiplier (init 1; Zhang et al. 2019)."""

  init_value: float = 1.0
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, v = self.ctx.parametrization, self.init_value
    g = make_param(self, "scale", (), names=(), role=NORM, fan_in=1, fan_out=1, ctx=self.ctx,
                   init=lambda key, shape, std: jnp.full(shape, v))
    g = scale_param(g.astype(self.ctx.dtype), p.op_scales(NORM, 1, 1, x.size))
    return x * g


class ScalarBias(nn.Module):
  """x + b for one learned scalar b (role BIAS, fan 1, init 0): Fixup's scalar biases."""

  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.ctx.parametrization
    b = make_param(self, "bias", (), names=(), role=BIAS, fan_in=1, fan_out=1, ctx=self.ctx)
    return x + scale_param(b.astype(self.ctx.dtype), p.op_scales(BIAS, 1, 1, x.size))
