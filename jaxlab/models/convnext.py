"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s", Sec. 2 and Fig. 4) sized for small
images: a patchify stem (Conv with kernel = stride = patch_size, then LayerNorm), stages of
ConvNeXt blocks with a LayerNorm + 2x2 stride-2 Conv downsampling before every stage but the
first, global average pool, LayerNorm, readout.

Block (inverted bottleneck, Fig. 4 right):
    x + r * gamma * Dense_down(GELU(Dense_up(LN(dwconv_kxk(x)))))
with the k x k depthwise conv (default 7) run by `pallas_kernels.depthwise_conv2d`, Dense_up of
width mlp_ratio * C, and gamma the per-channel layer scale (Touvron et al. 2021, "CaiT"; init
layer_scale_init, 0 = none). The residual update goes through parametrization.residual (block
index over all stages, num_layers = number of blocks): x + r * branch with r = 1 for SP and
(L / L_base)^-alpha for depth-muP, u-muP's weighted add. LayerNorms act on the channels of each
pixel (the paper's channels_last LN). The stem conv has no bias (as the ResNet's): a blank patch
(MNIST background, exactly 0) then stays exactly 0 and the stem LN maps it to its learned bias,
instead of normalising a near-zero vector (gradients ~ 1/sqrt(eps)). No stochastic depth (the
train step has no rng).

Roles: the stem is INPUT, the downsampling convs and pointwise Denses HIDDEN, the readout
READOUT. The depthwise kernel [k, k, C] is INPUT-role (vector-like, Tensor Programs V Table 3):
its fan_in = k*k stays fixed as the width grows, only fan_out = C grows, so muP keeps its Adam
LR at x1 (HIDDEN would get 1/m) and u-muP multiplies its output by 1/k. The depthwise conv is not
quantized (it runs through the Pallas kernel, not the policy's conv op); the stem, downsampling
convs, Denses and readout follow the quantization policy.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.depthwise import DepthwiseConv
from jaxlab.models.layers import Conv, FeedForward, Readout, make_param, scale_param
from jaxlab.models.norms import LayerNorm
from jaxlab.models.size import Sized
from jaxlab.param.roles import INPUT, NORM


class ConvNeXtBlock(nn.Module):
  """x + r * gamma * mlp(norm(dwconv(x))) (module docstring); `layer` is this block's index
  among all `num_layers` blocks of the network."""

  layer: int = 0
  num_layers: int = 1
  kernel_size: int = 7
  mlp_ratio: int = 4
  layer_scale_init: float = 1e-6
  implementation: str | None = None
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx)
    p, C = self.ctx.parametrization, x_BHWC.shape[-1]

    def branch(h):
      h = DepthwiseConv((self.kernel_size,) * 2, implementation=self.implementation,
                        name="dwconv", **kw)(h)
      h = LayerNorm(name="norm", axis_name="conv_out", **kw)(h)
      h = FeedForward(self.mlp_ratio * C, activation="gelu", name="mlp", **kw)(h)
      if self.layer_scale_init:
        v = self.layer_scale_init
        gamma = make_param(self, "layer_scale", (C,), names=("conv_out",), role=NORM, fan_in=C,
                           fan_out=C, ctx=self.ctx,
                           init=lambda key, shape, std: jnp.full(shape, v, jnp.float32))
        h = h * scale_param(gamma.astype(h.dtype), p.op_scales(NORM, C, C, h.size // C))
      return h

    return p.residual(x_BHWC, branch, layer=self.layer, num_layers=self.num_layers)


class ConvNeXt(nn.Module, Sized):
  """Images [B, H, W, C] -> logits [B, num_classes]. Stage s has widths[s] channels and
  depths[s] blocks; the stem divides H and W by patch_size, each later stage by 2 (floor). Its
  width is widths[0], its depth sum(depths)."""

  WIDTH_KEY, DEPTH_KEY = "widths", "depths"

  widths: tuple[int, ...] = (32, 64)
  depths: tuple[int, ...] = (2, 2)
  kernel_size: int = 7
  patch_size: int = 2
  mlp_ratio: int = 4
  num_classes: int = 10
  layer_scale_init: float = 1e-6
  implementation: str | None = None  # of pallas_kernels.depthwise_conv2d (None: per backend)
  ctx: LayerContext = DEFAULT

  @classmethod
  def with_width(cls, attrs: Mapping[str, Any], width: int) -> dict[str, Any]:
    """{'widths': ...} with widths[0] = width, the later stages in their original ratios."""
    widths = tuple(cls.attribute(attrs, "widths"))
    return {"widths": tuple(width * w // widths[0] for w in widths)}

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    widths, depths = tuple(self.widths), tuple(self.depths)
    if not widths or len(widths) != len(depths) or min(widths + depths) < 1:
      raise UserError(f"config.model.widths {widths} and depths {depths} must be positive and "
                      "of equal length (one entry per stage)")
    if self.kernel_size < 1:
      raise UserError(f"config.model.kernel_size must be positive; got {self.kernel_size}")
    P = self.patch_size
    H, W = x_BHWC.shape[1:3]
    if H % P or W % P:
      raise UserError(f"image {(H, W)} not divisible by patch_size {P} (config.model.patch_size)")
    if min(H, W) // P < 2 ** (len(widths) - 1):
      raise UserError(f"image {(H, W)} too small for config.model.patch_size={P} and "
                      f"{len(widths)} stages "
                      "(each later stage halves the resolution)")
    kw = dict(ctx=self.ctx)
    x = Conv(widths[0], P, strides=P, padding="VALID", role=INPUT, use_bias=False, name="stem",
             **kw)(x_BHWC)
    x = LayerNorm(name="stem_norm", axis_name="conv_out", **kw)(x)
    num_blocks, index = sum(depths), 0
    for s, (width, depth) in enumerate(zip(widths, depths)):
      if s > 0:
        x = LayerNorm(name=f"downsample_{s}_norm", axis_name="conv_out", **kw)(x)
        x = Conv(width, 2, strides=2, padding="VALID", name=f"downsample_{s}", **kw)(x)
      for b in range(depth):
        x = ConvNeXtBlock(layer=index, num_layers=num_blocks, kernel_size=self.kernel_size,
                          mlp_ratio=self.mlp_ratio, layer_scale_init=self.layer_scale_init,
                          implementation=self.implementation, name=f"stage_{s}_block_{b}",
                          **kw)(x)
        index += 1
    x_BC = LayerNorm(name="final_norm", axis_name="conv_out", **kw)(jnp.mean(x, axis=(1, 2)))
    return Readout(self.num_classes, kernel_axes=("conv_out", "classes"), name="readout",
                   **kw)(x_BC)
