"""Vision Transformer (Dosovitskiy et al. 2021): patchify with a strided Conv, add learned
positions, Pre-LN encoder blocks (non-causal attention + GELU MLP), final norm, pool, readout.

block_options (depth-control keys norm_placement, mix_ratio, branch_gain, init_scheme,
attention_init, and attention_impl) are the Transformer LM's (jaxlab.models.transformer
.BlockOptions, jaxlab.depth); the final norm is dropped when the last block ends in one (post,
deepnorm).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.depth import placement
from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import Conv, PositionEmbedding, Readout, make_param
from jaxlab.models.norms import LayerNorm
from jaxlab.models.size import Sized
from jaxlab.models.transformer import Block, BlockOptions
from jaxlab.param.roles import INPUT

POOLS = ("mean", "cls")


class ViT(nn.Module, Sized):
  """Images [B, H, W, C] (H, W multiples of patch_size) -> logits [B, num_classes].

  pool='cls' prepends a learned class token (INPUT role, fan_in=1: a weight reading a constant)
  and classifies from it; pool='mean' averages the normalised patch tokens.
  """

  WIDTH_KEY, DEPTH_KEY = "dim", "depth"

  patch_size: int = 4
  dim: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  num_classes: int = 10
  pool: str = "mean"
  ctx: LayerContext = DEFAULT
  block_options: BlockOptions = BlockOptions()

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if self.pool not in POOLS:
      raise UserError(f"unknown pool {self.pool!r} (config.model.pool); valid: {', '.join(POOLS)}")
    o = self.block_options
    o.check()
    kw = dict(ctx=self.ctx)
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
                         ctx=self.ctx)
      cls_B1D = jnp.broadcast_to(cls_D.astype(x_BND.dtype), (B, 1, D))
      x_BND = jnp.concatenate([cls_B1D, x_BND], axis=1)
    N = x_BND.shape[1]
    x_BND = x_BND + PositionEmbedding(N, D, name="pos_embed", **kw)(N, batch=B)
    for i in range(self.depth):
      x_BND = Block(self.num_heads, self.depth, layer=i, mlp_ratio=self.mlp_ratio, causal=False,
                    activation="gelu", use_bias=True, options=o, name=f"block_{i}", **kw)(x_BND)
    if placement.has_final_norm(o.norm_placement, self.depth, o.mix_ratio):
      x_BND = LayerNorm(name="final_norm", **kw)(x_BND)
    x_BD = x_BND[:, 0] if self.pool == "cls" else jnp.mean(x_BND, axis=1)
    return Readout(self.num_classes, name="readout", **kw)(x_BD)
