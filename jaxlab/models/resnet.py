"""CIFAR-style ResNet (He et al. 2016, §4.2): 3x3 stem, 3 stages of n basic blocks with widths
(w, 2w, 4w), global average pool, readout; depth 6n + 2 for n = blocks_per_stage.

Normalisation is a LayerNorm over the channels of each pixel (as in ConvNeXt), not BatchNorm:
BatchNorm needs a mutable 'batch_stats' collection and makes the loss depend on the batch
composition, while jaxlab's train step is a pure function of 'params' only. Residual branches
are multiplied by parametrization.residual_multiplier(number of blocks) (1 for SP; depth-muP).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models.layers import Conv, LayerNorm, Readout, scale
from jaxlab.param.base import SP, Parametrization
from jaxlab.param.roles import INPUT
from jaxlab.quant.policy import NO_QUANT, QuantPolicy


class BasicBlock(nn.Module):
  """relu(shortcut(x) + r * norm(conv(relu(norm(conv(x)))))), 3x3 convs (He et al. 2016, Fig. 2).

  The shortcut is a strided 1x1 conv + norm when the shape changes (option B), else identity.
  """

  features: int
  strides: int = 1
  residual_multiplier: float = 1.0
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    ln = dict(axis_name="conv_out", **kw)
    h = Conv(self.features, 3, strides=self.strides, use_bias=False, name="conv_0", **kw)(x_BHWC)
    h = jax.nn.relu(LayerNorm(name="norm_0", **ln)(h))
    h = Conv(self.features, 3, use_bias=False, name="conv_1", **kw)(h)
    h = LayerNorm(name="norm_1", **ln)(h)
    shortcut = x_BHWC
    if self.strides != 1 or x_BHWC.shape[-1] != self.features:
      shortcut = Conv(self.features, 1, strides=self.strides, use_bias=False, name="proj",
                      **kw)(x_BHWC)
      shortcut = LayerNorm(name="proj_norm", **ln)(shortcut)
    return jax.nn.relu(shortcut + scale(h, self.residual_multiplier))


class ResNet(nn.Module):
  """Images [B, H, W, C] -> logits [B, num_classes]; stride 2 at the start of stages 2 and 3."""

  width: int = 16
  blocks_per_stage: int = 2
  num_classes: int = 10
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
    del train
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype)
    r = self.parametrization.residual_multiplier(3 * self.blocks_per_stage)
    x = Conv(self.width, 3, role=INPUT, use_bias=False, name="stem", **kw)(x_BHWC)
    x = jax.nn.relu(LayerNorm(axis_name="conv_out", name="stem_norm", **kw)(x))
    for stage, mult in enumerate((1, 2, 4)):
      for b in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(self.width * mult, strides=strides, residual_multiplier=r,
                       name=f"stage_{stage}_block_{b}", **kw)(x)
    x_BC = jnp.mean(x, axis=(1, 2))
    return Readout(self.num_classes, kernel_axes=("conv_out", "classes"), name="readout",
                   **kw)(x_BC)
