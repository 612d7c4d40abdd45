"""Pre-LN transformer block and decoder-only language model (GPT-2 style; Radford et al. 2019).

Block: x + r * attn(norm(x)); x + r * mlp(norm(x)), each residual update delegated to
parametrization.residual (r = residual_multiplier(num_layers): 1 for SP, (L/L_base)^-alpha for
depth-muP, Yang et al. 2023; u-muP's weighted add). Layers are unrolled and named
block_0..block_{L-1} so per-layer statistics are per block.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models.layers import (Attention, Embed, FeedForward, PositionEmbedding, Readout,
                                  norm_class)
from jaxlab.param.base import SP, Parametrization
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

POSITIONALS = ("rope", "learned")


class Block(nn.Module):
  """Pre-LN residual block: attention then feed-forward, each on a normalised residual stream."""

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

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    Norm = norm_class(self.norm)
    p = self.parametrization
    where = dict(layer=self.layer, num_layers=self.num_layers, branches_per_layer=2)

    def attn(x):
      h = Norm(use_bias=self.use_bias, name="attn_norm", **kw)(x)
      return Attention(self.num_heads, num_kv_heads=self.num_kv_heads, causal=self.causal,
                       rope=self.rope, use_bias=self.use_bias, name="attn", **kw)(h, mask=mask)

    def mlp(x):
      h = Norm(use_bias=self.use_bias, name="mlp_norm", **kw)(x)
      return FeedForward(self.mlp_ratio * x.shape[-1], activation=self.activation,
                         use_bias=self.use_bias, name="mlp", **kw)(h)

    x_BLD = p.residual(x_BLD, attn, branch_index=0, **where)
    return p.residual(x_BLD, mlp, branch_index=1, **where)


class TransformerLM(nn.Module):
  """Decoder-only LM: tokens [B, L] -> logits [B, L, vocab_size] (byte-level by default).

  positional: 'rope' (rotary in every attention) or 'learned' (absolute table up to max_len).
  tie_embeddings: readout = Embed.attend (x @ table.T) instead of a separate Readout.
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

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout (yet)
    if self.positional not in POSITIONALS:
      raise ValueError(f"unknown positional {self.positional!r}; valid: {POSITIONALS}")
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    L = tokens_BL.shape[1]
    if L > self.max_len:
      raise ValueError(f"sequence length {L} > max_len {self.max_len}")
    embed = Embed(self.vocab_size, self.d_model, name="embed", **kw)
    x_BLD = embed(tokens_BL)
    if self.positional == "learned":
      x_BLD = x_BLD + PositionEmbedding(self.max_len, self.d_model, name="pos_embed",
                                        **kw)(L, batch=tokens_BL.shape[0])
    for i in range(self.num_layers):
      x_BLD = Block(self.num_heads, self.num_layers, layer=i, mlp_ratio=self.mlp_ratio,
                    causal=True, rope=self.positional == "rope", num_kv_heads=self.num_kv_heads,
                    norm=self.norm, activation=self.activation, use_bias=self.use_bias,
                    name=f"block_{i}", **kw)(x_BLD)
    x_BLD = norm_class(self.norm)(use_bias=self.use_bias, name="final_norm", **kw)(x_BLD)
    if self.tie_embeddings:
      return embed.attend(x_BLD)
    return Readout(self.vocab_size, use_bias=False, kernel_axes=("embed", "vocab"),
                   name="readout", **kw)(x_BLD)
