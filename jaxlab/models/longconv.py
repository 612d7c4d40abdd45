"""Byte-level language model with a gated long-convolution mixer in place of attention: the
order-2 Hyena / H3 operator (Poli et al. 2023, "Hyena Hierarchy", Eq. 3 with N = 2; Fu et al.
2023, "Hungry Hungry Hippos", Sec. 3.1) with an SGConv global kernel (Li et al. 2022, "What
Makes Convolutional Models Great on Long Sequence Modeling?", Sec. 3).

Mixer, for x [B, L, D]:
    (g, u, v) = ShortConv(Dense_in(x))             three D-wide streams: gate, input, value
    y = g * (k * (u * v) + skip * (u * v))         k: causal long conv, k [L, D] from SGConv
    out = Dense_out(y)
ShortConv is a causal depthwise conv of `short_taps` taps on all 3D projected channels
(jaxlab.models.depthwise.DepthwiseConv, pallas_kernels.depthwise_conv1d); `k *` is pallas_kernels.long_conv (FFT on CPU/GPU); the
kernel k comes from pallas_kernels.SGConvKernel (scale i: kernel_dim parameters interpolated to
kernel_dim * 2^i taps and multiplied by decay^i; concatenated, L2-normalised per channel) of
length max_len, sliced to the sequence length, so the parameters do not depend on L. `skip` is
SGConv's per-channel D term.

Block (Pre-LN): x + r * mixer(norm(x)); x + r * mlp(norm(x)), each update through
parametrization.residual like the Transformer's (jaxlab.models.transformer). No positional
encoding: the causal convolutions see order. Every op is causal, so logits at t depend on
tokens <= t only.

Roles: the short-conv kernel [taps, 3D] and the SGConv parameters [kernel_dim, D] are INPUT-role
(vector-like: their fan_in, taps or kernel_dim, does not grow with width); the SGConv kernel is
L2-normalised, so it takes no forward multiplier (its output scale is fixed by construction);
`skip` is a NORM-role gain (init 1). Dense_in / Dense_out / MLP are HIDDEN. The two convs are not
quantized (they run through the Pallas kernels, not the policy's ops).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax

import pallas_kernels
from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.depthwise import DepthwiseConv
from jaxlab.models.layers import (Dense, Embed, FeedForward, Readout, make_param, scale_param,
                                  split_last)
from jaxlab.models.norms import norm_class
from jaxlab.models.size import Sized
from jaxlab.param.roles import INPUT, NORM
from pallas_kernels.long_convolution import sgconv

NORMS = ("layernorm", "rmsnorm")


class SGConv(nn.Module):
  """y = k * u + skip * u with k = SGConvKernel(max_len, C)[:L] (module docstring).

  The SGConvKernel parameters kernel_0 .. kernel_{S-1} [kernel_dim, C] are created here with
  ParamMeta (INPUT role, fan_in = kernel_dim, init from the parametrization; the normalisation
  makes k independent of their scale) and passed to an unbound SGConvKernel.
  """

  max_len: int
  kernel_dim: int = 32
  decay: float = 0.5
  implementation: str | None = None  # of pallas_kernels.long_conv
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, u_BLC: jax.Array) -> jax.Array:
    p, d, (_, L, C) = self.ctx.parametrization, self.kernel_dim, u_BLC.shape
    dtype = self.ctx.dtype
    if L > self.max_len:
      raise ValueError(f"sequence length {L} > max_len {self.max_len}")
    generator = pallas_kernels.SGConvKernel(self.max_len, C, kernel_dim=d, decay=self.decay,
                                            parent=None)
    weights = {f"kernel_{i}": make_param(self, f"kernel_{i}", (d, C), names=("kernel_w", "mlp"),
                                         role=INPUT, fan_in=d, fan_out=C, ctx=self.ctx)
               for i in range(sgconv.num_scales(self.max_len, d))}
    k_LC = generator.apply({"params": weights})[:L]
    u_BLC = u_BLC.astype(dtype)
    y = pallas_kernels.long_conv(u_BLC, k_LC.astype(dtype),
                                 implementation=self.implementation)
    skip = make_param(self, "skip", (C,), names=("mlp",), role=NORM, fan_in=C, fan_out=C,
                      ctx=self.ctx)
    skip = scale_param(skip.astype(dtype), p.op_scales(NORM, C, C, u_BLC.size // C))
    return y + u_BLC * skip


class LongConvMixer(nn.Module):
  """The gated long-convolution mixer (module docstring): [B, L, D] -> [B, L, D]."""

  max_len: int
  short_taps: int = 3
  kernel_dim: int = 32
  decay: float = 0.5
  use_bias: bool = False
  implementation: str | None = None
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx)
    D = x_BLD.shape[-1]
    h = Dense(3 * D, use_bias=self.use_bias, kernel_axes=("embed", "mlp"), name="in_proj",
              **kw)(x_BLD)
    h = DepthwiseConv((self.short_taps,), causal=True, channel_axis="mlp",
                      implementation=self.implementation, name="short_conv", **kw)(h)
    gate, u, v = split_last(h, (D, 2 * D))
    y = SGConv(self.max_len, kernel_dim=self.kernel_dim, decay=self.decay,
               implementation=self.implementation, name="long_conv", **kw)(u * v)
    return Dense(D, use_bias=self.use_bias, kernel_axes=("mlp", "embed"), name="out_proj",
                 **kw)(gate * y)


def _fields_of(cls: type[nn.Module], module: nn.Module) -> dict[str, Any]:
  """module's values of the constructor fields of cls (parent and name aside)."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(cls)
          if f.init and f.name not in ("parent", "name")}


class LongConvHparams(nn.Module):
  """The hyperparameters LongConvLM hands to every LongConvBlock (field docs: LongConvLM)."""

  num_layers: int = 4  # depth of the whole stack, for the residual update
  mlp_ratio: int = 4
  max_len: int = 256
  short_taps: int = 3
  kernel_dim: int = 32
  decay: float = 0.5
  norm: str = "layernorm"
  activation: str = "gelu_tanh"
  use_bias: bool = False
  implementation: str | None = None
  ctx: LayerContext = DEFAULT


class LongConvBlock(LongConvHparams):
  """Pre-LN residual block: x + r * mixer(norm(x)); x + r * mlp(norm(x))."""

  layer: int = 0

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx)
    p, D = self.ctx.parametrization, x_BLD.shape[-1]
    Norm = norm_class(self.norm)
    where = dict(layer=self.layer, num_layers=self.num_layers, branches_per_layer=2)

    def mixer(h):
      h = Norm(use_bias=self.use_bias, name="mixer_norm", **kw)(h)
      return LongConvMixer(**_fields_of(LongConvMixer, self), name="mixer")(h)

    def mlp(h):
      h = Norm(use_bias=self.use_bias, name="mlp_norm", **kw)(h)
      return FeedForward(self.mlp_ratio * D, activation=self.activation, use_bias=self.use_bias,
                         name="mlp", **kw)(h)

    x_BLD = p.residual(x_BLD, mixer, branch_index=0, **where)
    return p.residual(x_BLD, mlp, branch_index=1, **where)


class _LMSizes(nn.Module):
  """LongConvLM's own fields. Dataclass fields are collected from the last base first, so as
  LongConvLM's second base these come first: its fields keep the order vocab_size, d_model,
  num_layers, ... (constructor and models.config_keys)."""

  vocab_size: int = 256
  d_model: int = 256


class LongConvLM(LongConvHparams, _LMSizes, Sized):
  """Tokens [B, L] -> logits [B, L, vocab_size] (byte-level by default), L <= max_len; the
  call signature of TransformerLM, so the 'lm' task and train loop use it unchanged.

  max_len: length of the SGConv kernels (set it to the training seq_len); short_taps: taps of
  the short conv; kernel_dim / decay: SGConv's d and alpha; implementation: of both conv
  kernels (None: Pallas on TPU, XLA / FFT elsewhere; "pallas_interpret" in tests).
  """

  WIDTH_KEY, DEPTH_KEY = "d_model", "num_layers"

  @nn.compact
  def __call__(self, tokens_BL: jax.Array) -> jax.Array:
    if self.norm not in NORMS:
      raise UserError(f"config.model.norm={self.norm!r}; valid: {', '.join(NORMS)}")
    if tokens_BL.shape[1] > self.max_len:
      raise UserError(f"sequence length {tokens_BL.shape[1]} > max_len {self.max_len}: lower "
                      "config.data.seq_len or raise config.model.max_len")
    kw = dict(ctx=self.ctx)
    x_BLD = Embed(self.vocab_size, self.d_model, name="embed", **kw)(tokens_BL)
    for i in range(self.num_layers):
      x_BLD = LongConvBlock(**_fields_of(LongConvHparams, self), layer=i,
                            name=f"block_{i}")(x_BLD)
    x_BLD = norm_class(self.norm)(use_bias=self.use_bias, name="final_norm", **kw)(x_BLD)
    return Readout(self.vocab_size, use_bias=False, kernel_axes=("embed", "vocab"),
                   name="readout", **kw)(x_BLD)
