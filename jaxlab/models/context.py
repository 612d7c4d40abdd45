"""The layer context: what every jaxlab layer consults besides its own hyperparameters.

One frozen, hashable object carries the (resolved) parametrization, the quantization policy and
the dtypes, so a model passes `ctx` to its layers instead of forwarding each fact separately.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxlab.errors import UserError
from jaxlab.param.base import SP, Parametrization
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

DTYPES = ("float32", "bfloat16")


def dtype_of(name: str, key: str) -> jnp.dtype:
  """The jnp dtype named by config key `key`; UserError naming the valid names otherwise."""
  if name not in DTYPES:
    raise UserError(f"{key}={name!r}; valid: {', '.join(DTYPES)}")
  return jnp.dtype(name)


@dataclasses.dataclass(frozen=True)
class LayerContext:
  """parametrization: init stds, multipliers and LR scales (jaxlab.param); quant: the policy
  giving each layer its dot_general / conv (jaxlab.quant); dtype: the compute dtype inputs and
  weights are cast to; param_dtype: the dtype parameters are created (and kept) in."""

  parametrization: Parametrization = SP()
  quant: QuantPolicy = NO_QUANT
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))


DEFAULT = LayerContext()
