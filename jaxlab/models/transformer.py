"""Transformer block and decoder-only language model (GPT-2 style; Radford et al. 2019).

Block (default Pre-LN): x + r * attn(norm(x)); x + r * mlp(norm(x)), each residual update
delegated to parametrization.residual (r = residual_multiplier(num_layers): 1 for SP,
(L/L_base)^-alpha for depth-muP, Yang et al. 2023; u-muP's weighted add). Layers are unrolled
and named block_0..block_{L-1} so per-layer statistics are per block.

Depth and variance control (jaxlab.depth): `norm_placement` (pre | post | peri | mix | lns |
deepnorm | none; see jaxlab.depth.placement) with `mix_ratio` for Mix-LN, `branch_gain` (none |
rezero: a scalar gain initialised 0 ending each branch), `init_scheme` (default | lir: block l's
weights init x 1/sqrt(l)), `attention_init` (default | mimetic). norm="crmsnorm" (Jiang et al.
2023) makes the residual stream d_model - 1 wide (a compressed zero-mean d_model-vector; the
attention and MLP keep their d_model-based widths) with affine-free norms and, with use_bias, a
readout bias; jaxlab.depth.norm_conversion maps a trained Pre-LN model onto it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.depth import init_schemes, placement
from jaxlab.errors import UserError
from jaxlab.models.attention import Attention, attention_implementation
from jaxlab.models.layers import Embed, FeedForward, PositionEmbedding, Readout
from jaxlab.models.norms import ScalarGain, norm_class
from jaxlab.param.base import SP, Parametrization
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

POSITIONALS = ("rope", "learned")


def check_depth_keys(m: nn.Module) -> None:
  """UserErrors naming config.model.<key> for the depth-control keys of a Block / model."""
  placement.check(m.norm_placement)
  attention_implementation(m.attention_impl)
  placement.mix_post_layers(1, m.mix_ratio)
  init_schemes.check("branch_gain", m.branch_gain, init_schemes.BRANCH_GAINS)
  init_schemes.check("init_scheme", m.init_scheme, init_schemes.INIT_SCHEMES)
  init_schemes.check("attention_init", m.attention_init, init_schemes.ATTENTION_INITS)


class Block(nn.Module):
  """Residual block: attention then feed-forward, norms placed by `norm_placement` (default
  Pre-LN). width: the model width d when the residual stream is compressed to d - 1 (CRMSNorm);
  None = the stream width."""

  num_heads: int
  num_layers: int  # depth of the whole stack, for the residual multiplier
  layer: int = 0  # this block's index in the stack
  mlp_ratio: int = 4
  causal: bool = True
  rope: bool = False
  num_kv_heads: int | None = None
  norm: str = "layernorm"
  activation: str = "gelu_tanh"
  use_bias: bool = False
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32
  norm_placement: str = "pre"
  mix_ratio: float = placement.MIX_RATIO
  branch_gain: str = "none"
  init_scheme: str = "default"
  attention_init: str = "default"
  width: int | None = None
  attention_impl: str = "auto"  # pallas_kernels.attention implementation (attention.Attention)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    check_depth_keys(self)
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    Norm = norm_class(self.norm)
    affine = {} if self.norm == "crmsnorm" else dict(use_bias=self.use_bias)
    p = self.parametrization
    where = dict(layer=self.layer, num_layers=self.num_layers, branches_per_layer=2)
    spec = placement.block_norms(self.norm_placement, self.layer, self.num_layers, self.mix_ratio)
    d = self.width or x_BLD.shape[-1]
    if self.width and self.width % self.num_heads:
      raise UserError(f"config.model.d_model={self.width} not divisible by config.model.num_heads="
                      f"{self.num_heads}")
    head_dim = d // self.num_heads if self.width else None
    scale = init_schemes.block_init_scale(self.init_scheme, self.layer)
    kernel_inits = self._mimetic(d, head_dim or d // self.num_heads)

    def attn(h):
      return Attention(self.num_heads, head_dim=head_dim, num_kv_heads=self.num_kv_heads,
                       causal=self.causal, rope=self.rope, use_bias=self.use_bias,
                       init_scale=scale, value_init_scale=spec.init_scale,
                       kernel_inits=kernel_inits, implementation=self.attention_impl,
                       name="attn", **kw)(h, mask=mask)

    def mlp(h):
      return FeedForward(self.mlp_ratio * d, activation=self.activation, use_bias=self.use_bias,
                         init_scale=scale * spec.init_scale, name="mlp", **kw)(h)

    def sublayer(x, branch, prefix, index):
      gain = None
      if self.branch_gain == "rezero":
        gain = ScalarGain(0.0, name=f"{prefix}_gain", **kw)
      residual = lambda x, f: p.residual(x, f, branch_index=index, **where)  # noqa: E731
      norm = lambda name: Norm(name=name, **affine, **kw)  # noqa: E731
      return placement.sublayer(spec, x, branch, residual=residual, norm=norm, prefix=prefix,
                                gain=gain)

    return sublayer(sublayer(x_BLD, attn, "attn", 0), mlp, "mlp", 1)

  def _mimetic(self, d: int, head_dim: int):
    """(qkv_init, out_init) for attention_init='mimetic' (None otherwise); the shared key is
    drawn only while initialising."""
    if self.attention_init != "mimetic":
      return None
    if self.num_kv_heads not in (None, self.num_heads):
      raise UserError("config.model.attention_init='mimetic' needs num_kv_heads == num_heads "
                      f"(got {self.num_kv_heads} and {self.num_heads})")
    if not self.is_initializing():
      return None
    return init_schemes.mimetic_inits(self.make_rng("params"), self.num_heads, head_dim)


class TransformerLM(nn.Module):
  """Decoder-only LM: tokens [B, L] -> logits [B, L, vocab_size] (byte-level by default).

  positional: 'rope' (rotary in every attention) or 'learned' (absolute table up to max_len).
  tie_embeddings: readout = Embed.attend (x @ table.T) instead of a separate Readout.
  norm: layernorm | rmsnorm | crmsnorm; depth-control keys: see the module docstring.
  attention_impl: auto | xla | xla_chunked | pallas | pallas_interpret (pallas_kernels.attention;
  auto: Pallas on GPU/TPU, dense XLA on CPU up to its size limit, then chunked).
  """

  vocab_size: int = 256
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 2048
  positional: str = "rope"
  tie_embeddings: bool = False
  norm: str = "layernorm"
  num_kv_heads: int | None = None
  activation: str = "gelu_tanh"
  use_bias: bool = False
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32
  norm_placement: str = "pre"
  mix_ratio: float = placement.MIX_RATIO
  branch_gain: str = "none"
  init_scheme: str = "default"
  attention_init: str = "default"
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout (yet)
    if self.positional not in POSITIONALS:
      raise UserError(f"unknown positional {self.positional!r} (config.model.positional); valid: "
                      f"{', '.join(POSITIONALS)}")
    check_depth_keys(self)
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    L = tokens_BL.shape[1]
    if L > self.max_len:
      raise UserError(f"sequence length {L} > max_len {self.max_len}: lower config.data.seq_len or "
                      "raise config.model.max_len")
    compressed = self.norm == "crmsnorm"
    stream = self.d_model - 1 if compressed else self.d_model
    embed = Embed(self.vocab_size, stream, name="embed", **kw)
    x_BLD = embed(tokens_BL)
    if self.positional == "learned":
      x_BLD = x_BLD + PositionEmbedding(self.max_len, stream, name="pos_embed",
                                        **kw)(L, batch=tokens_BL.shape[0])
    depth = dict(norm_placement=self.norm_placement, mix_ratio=self.mix_ratio,
                 branch_gain=self.branch_gain, init_scheme=self.init_scheme,
                 attention_init=self.attention_init, attention_impl=self.attention_impl)
    if compressed:
      depth["width"] = self.d_model
    for i in range(self.num_layers):
      x_BLD = Block(self.num_heads, self.num_layers, layer=i, mlp_ratio=self.mlp_ratio,
                    causal=True, rope=self.positional == "rope", num_kv_heads=self.num_kv_heads,
                    norm=self.norm, activation=self.activation, use_bias=self.use_bias,
                    name=f"block_{i}", **depth, **kw)(x_BLD)
    if placement.has_final_norm(self.norm_placement, self.num_layers, self.mix_ratio):
      affine = {} if compressed else dict(use_bias=self.use_bias)
      x_BLD = norm_class(self.norm)(name="final_norm", **affine, **kw)(x_BLD)
    if self.tie_embeddings:
      return embed.attend(x_BLD)
    # CRMSNorm has no bias, so a use_bias model's readout carries the final norm's (b @ W).
    return Readout(self.vocab_size, use_bias=compressed and self.use_bias,
                   kernel_axes=("embed", "vocab"), name="readout", **kw)(x_BLD)
