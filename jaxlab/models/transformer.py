"""Transformer block and decoder-only language model (GPT-2 style; Radford et al. 2019).

Block (default Pre-LN): x + r * attn(norm(x)); x + r * mlp(norm(x)), each residual update
delegated to parametrization.residual (r = residual_multiplier(num_layers): 1 for SP,
(L/L_base)^-alpha for depth-muP, Yang et al. 2023; u-muP's weighted add). Layers are unrolled
and named block_0..block_{L-1} so per-layer statistics are per block.

Depth and variance control (jaxlab.depth) is one `BlockOptions` shared by every block (the flat
config.model keys of its field names): `norm_placement` (pre | post | peri | mix | lns |
deepnorm | none; see jaxlab.depth.placement) with `mix_ratio` for Mix-LN, `branch_gain` (none |
rezero: a scalar gain initialised 0 ending each branch), `init_scheme` (default | lir: block l's
weights init x 1/sqrt(l)), `attention_init` (default | mimetic). norm="crmsnorm" (Jiang et al.
2023) makes the residual stream d_model - 1 wide (a compressed zero-mean d_model-vector; the
attention and MLP keep their d_model-based widths) with affine-free norms and, with use_bias, a
readout bias; jaxlab.depth.norm_conversion maps a trained Pre-LN model onto it.
"""

import dataclasses

import flax.linen as nn
import jax

from jaxlab.depth import init_schemes, placement
from jaxlab.errors import UserError
from jaxlab.models.attention import Attention, attention_implementation
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import Embed, FeedForward, PositionEmbedding, Readout
from jaxlab.models.norms import ScalarGain, norm_class
from jaxlab.models.size import Sized

POSITIONALS = ("rope", "learned")


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """Depth and variance control of a Transformer block (module docstring), and the
  pallas_kernels.attention implementation its attention uses (attention_impl: auto | xla |
  xla_chunked | pallas | pallas_interpret; auto: Pallas on GPU/TPU, dense XLA on CPU up to its
  size limit, then chunked)."""

  norm_placement: str = "pre"
  mix_ratio: float = placement.MIX_RATIO
  branch_gain: str = "none"
  init_scheme: str = "default"
  attention_init: str = "default"
  attention_impl: str = "auto"

  def check(self) -> None:
    """UserErrors naming config.model.<key> for an invalid value."""
    placement.check(self.norm_placement)
    attention_implementation(self.attention_impl)
    placement.mix_post_layers(1, self.mix_ratio)
    init_schemes.check("branch_gain", self.branch_gain, init_schemes.BRANCH_GAINS)
    init_schemes.check("init_scheme", self.init_scheme, init_schemes.INIT_SCHEMES)
    init_schemes.check("attention_init", self.attention_init, init_schemes.ATTENTION_INITS)


class Block(nn.Module):
  """Residual block: attention then feed-forward, norms placed by options.norm_placement
  (default Pre-LN). width: the model width d when the residual stream is compressed to d - 1
  (CRMSNorm); None = the stream width."""

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
  ctx: LayerContext = DEFAULT
  options: BlockOptions = BlockOptions()
  width: int | None = None

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    o = self.options
    o.check()
    Norm = norm_class(self.norm)
    affine = {} if self.norm == "crmsnorm" else dict(use_bias=self.use_bias)
    p = self.ctx.parametrization
    where = dict(layer=self.layer, num_layers=self.num_layers, branches_per_layer=2)
    spec = placement.block_norms(o.norm_placement, self.layer, self.num_layers, o.mix_ratio)
    d = self.width or x_BLD.shape[-1]
    if self.width and self.width % self.num_heads:
      raise UserError(f"config.model.d_model={self.width} not divisible by config.model.num_heads="
                      f"{self.num_heads}")
    head_dim = d // self.num_heads if self.width else None
    scale = init_schemes.block_init_scale(o.init_scheme, self.layer)
    kernel_inits = self._mimetic(d, head_dim or d // self.num_heads)

    def attn(h):
      return Attention(self.num_heads, head_dim=head_dim, num_kv_heads=self.num_kv_heads,
                       causal=self.causal, rope=self.rope, use_bias=self.use_bias,
                       init_scale=scale, value_init_scale=spec.init_scale,
                       kernel_inits=kernel_inits, implementation=o.attention_impl,
                       name="attn", ctx=self.ctx)(h, mask=mask)

    def mlp(h):
      return FeedForward(self.mlp_ratio * d, activation=self.activation, use_bias=self.use_bias,
                         init_scale=scale * spec.init_scale, name="mlp", ctx=self.ctx)(h)

    def sublayer(x, branch, prefix, index):
      gain = None
      if o.branch_gain == "rezero":
        gain = ScalarGain(0.0, name=f"{prefix}_gain", ctx=self.ctx)
      residual = lambda x, f: p.residual(x, f, branch_index=index, **where)  # noqa: E731
      norm = lambda name: Norm(name=name, **affine, ctx=self.ctx)  # noqa: E731
      return placement.sublayer(spec, x, branch, residual=residual, norm=norm, prefix=prefix,
                                gain=gain)

    return sublayer(sublayer(x_BLD, attn, "attn", 0), mlp, "mlp", 1)

  def _mimetic(self, d: int, head_dim: int):
    """(qkv_init, out_init) for attention_init='mimetic' (None otherwise); the shared key is
    drawn only while initialising."""
    if self.options.attention_init != "mimetic":
      return None
    if self.num_kv_heads not in (None, self.num_heads):
      raise UserError("config.model.attention_init='mimetic' needs num_kv_heads == num_heads "
                      f"(got {self.num_kv_heads} and {self.num_heads})")
    if not self.is_initializing():
      return None
    return init_schemes.mimetic_inits(self.make_rng("params"), self.num_heads, head_dim)


class TransformerLM(nn.Module, Sized):
  """Decoder-only LM: tokens [B, L] -> logits [B, L, vocab_size] (byte-level by default).

  positional: 'rope' (rotary in every attention) or 'learned' (absolute table up to max_len).
  tie_embeddings: readout = Embed.attend (x @ table.T) instead of a separate Readout.
  norm: layernorm | rmsnorm | crmsnorm; block_options: see BlockOptions.
  """

  WIDTH_KEY, DEPTH_KEY = "d_model", "num_layers"

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
  ctx: LayerContext = DEFAULT
  block_options: BlockOptions = BlockOptions()

  @nn.compact
  def __call__(self, tokens_BL: jax.Array) -> jax.Array:
    if self.positional not in POSITIONALS:
      raise UserError(f"unknown positional {self.positional!r} (config.model.positional); valid: "
                      f"{', '.join(POSITIONALS)}")
    o = self.block_options
    o.check()
    kw = dict(ctx=self.ctx)
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
    for i in range(self.num_layers):
      x_BLD = Block(self.num_heads, self.num_layers, layer=i, mlp_ratio=self.mlp_ratio,
                    causal=True, rope=self.positional == "rope", num_kv_heads=self.num_kv_heads,
                    norm=self.norm, activation=self.activation, use_bias=self.use_bias,
                    options=o, width=self.d_model if compressed else None, name=f"block_{i}",
                    **kw)(x_BLD)
    if placement.has_final_norm(o.norm_placement, self.num_layers, o.mix_ratio):
      affine = {} if compressed else dict(use_bias=self.use_bias)
      x_BLD = norm_class(self.norm)(name="final_norm", **affine, **kw)(x_BLD)
    if self.tie_embeddings:
      return embed.attend(x_BLD)
    # CRMSNorm has no bias, so a use_bias model's readout carries the final norm's (b @ W).
    return Readout(self.vocab_size, use_bias=compressed and self.use_bias,
                   kernel_axes=("embed", "vocab"), name="readout", **kw)(x_BLD)
