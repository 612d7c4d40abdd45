"""Vision Transformer (Dosovitskiy et al. 2021): patchify with a strided Conv, add learned
positions, Pre-LN encoder blocks (non-causal attention + GELU MLP), final norm, pool, readout.

The depth-control keys norm_placement, mix_ratio, branch_gain, init_scheme and attention_init
are those of the Transformer LM's Block (jaxlab.models.transformer, jaxlab.depth); the final
norm is dropped when the last block ends in one (post, deepnorm).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.depth import placement
from jaxlab.errors import UserError
from jaxlab.models.layers import Conv, PositionEmbedding, Readout, make_param
from jaxlab.models.norms import LayerNorm
from jaxlab.models.transformer import Block, check_depth_keys
from jaxlab.param.base import SP, Parametrization
from jaxlab.param.roles import INPUT
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

POOLS = ("mean", "cls")


class ViT(nn.Module):
  """Images [B, H, W, C] (H, W multiples of patch_size) -> logits [B, num_classes].

  pool='cls' prepends a learned class token (INPUT role, fan_in=1: a weight reading a constant)
  and classifies from it; pool='mean' averages the normalised patch tokens.
  """

  patch_size: int = 4
  dim: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  num_classes: int = 10
  pool: str = "mean"
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32
  norm_placement: str = "pre"
  mix_ratio: float = placement.MIX_RATIO
  branch_gain: str = "none"
  init_scheme: str = "default"
  attention_init: str = "default"
  attention_impl: str = "auto"  # pallas_kernels.attention implementation (see TransformerLM)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
    del train
    if self.pool not in POOLS:
      raise UserError(f"unknown pool {self.pool!r} (config.model.pool); valid: {', '.join(POOLS)}")
    check_depth_keys(self)
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    P = self.patch_size
    if x_BHWC.shape[1] % P or x_BHWC.shape[2] % P:
      raise UserError(f"image {x_BHWC.shape[1:3]} not divisible by patch_size {P} "
                      "(config.model.patch_size)")
    x = Conv(self.dim, P, strides=P, padding="VALID", role=INPUT,
             kernel_axes=("kernel_h", "kernel_w", "conv_in", "embed"), name="patch_embed",
             **kw)(x_BHWC)
    B, h, w, D = x.shape
    x_BND = x.reshape(B, h * w, D)
    if self.pool == "cls":
      cls_D = make_param(self, "cls", (D,), names=("embed",), role=INPUT, fan_in=1, fan_out=D,
                         parametrization=self.parametrization)
      cls_B1D = jnp.broadcast_to(cls_D.astype(x_BND.dtype), (B, 1, D))
      x_BND = jnp.concatenate([cls_B1D, x_BND], axis=1)
    N = x_BND.shape[1]
    x_BND = x_BND + PositionEmbedding(N, D, name="pos_embed", **kw)(N, batch=B)
    depth = dict(norm_placement=self.norm_placement, mix_ratio=self.mix_ratio,
                 branch_gain=self.branch_gain, init_scheme=self.init_scheme,
                 attention_init=self.attention_init, attention_impl=self.attention_impl)
    for i in range(self.depth):
      x_BND = Block(self.num_heads, self.depth, layer=i, mlp_ratio=self.mlp_ratio, causal=False,
                    activation="gelu", use_bias=True, name=f"block_{i}", **depth, **kw)(x_BND)
    if placement.has_final_norm(self.norm_placement, self.depth, self.mix_ratio):
      x_BND = LayerNorm(name="final_norm", **kw)(x_BND)
    x_BD = x_BND[:, 0] if self.pool == "cls" else jnp.mean(x_BND, axis=1)
    return Readout(self.num_classes, name="readout", **kw)(x_BD)
