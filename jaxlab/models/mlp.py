"""Fully connected classifier: flatten -> [Dense -> activation] * depth -> Readout.

The first Dense reads the data (INPUT role), the rest are HIDDEN, the last layer is READOUT
(Tensor Programs V, Table 3).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models.layers import Dense, Readout, apply_activation
from jaxlab.param.base import SP, Parametrization
from jaxlab.param.roles import HIDDEN, INPUT
from jaxlab.quant.policy import NO_QUANT, QuantPolicy


class MLP(nn.Module):
  """x [B, ...] (e.g. images B,H,W,C) -> logits [B, num_classes]."""

  hidden_widths: tuple[int, ...]
  num_classes: int
  activation: str = "relu"
  use_bias: bool = True
  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    kw = dict(parametrization=self.parametrization, quant=self.quant, dtype=self.dtype,
              use_bias=self.use_bias)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_widths):
      role, axes = (INPUT, ("input", "mlp")) if i == 0 else (HIDDEN, ("embed", "mlp"))
      x = Dense(width, role=role, kernel_axes=axes, name=f"dense_{i}", **kw)(x)
      x = apply_activation(self.activation, x, self.parametrization)
    in_axis = "embed" if self.hidden_widths else "input"
    return Readout(self.num_classes, kernel_axes=(in_axis, "classes"), name="readout", **kw)(x)
