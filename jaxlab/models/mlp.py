"""Fully connected classifier: flatten -> [Dense -> activation] * depth -> Readout.

The first Dense reads the data (INPUT role), the rest are HIDDEN, the last layer is READOUT
(Tensor Programs V, Table 3).
"""

from typing import Any, Mapping

import flax.linen as nn
import jax

from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import Dense, Readout, apply_activation
from jaxlab.models.size import Sized
from jaxlab.param.roles import HIDDEN, INPUT


class MLP(nn.Module, Sized):
  """x [B, ...] (e.g. images B,H,W,C) -> logits [B, num_classes]; its width is the first hidden
  width, its depth the number of hidden layers (no residual blocks)."""

  WIDTH_KEY = "hidden_widths"

  hidden_widths: tuple[int, ...]
  num_classes: int
  activation: str = "relu"
  use_bias: bool = True
  ctx: LayerContext = DEFAULT

  @classmethod
  def depth_of(cls, attrs: Mapping[str, Any]) -> int:
    return len(cls.attribute(attrs, "hidden_widths"))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx, use_bias=self.use_bias)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_widths):
      role, axes = (INPUT, ("input", "mlp")) if i == 0 else (HIDDEN, ("embed", "mlp"))
      x = Dense(width, role=role, kernel_axes=axes, name=f"dense_{i}", **kw)(x)
      x = apply_activation(self.activation, x, self.ctx.parametrization)
    in_axis = "embed" if self.hidden_widths else "input"
    return Readout(self.num_classes, kernel_axes=(in_axis, "classes"), name="readout", **kw)(x)
