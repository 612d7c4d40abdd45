"""Parametrizations as pure, frozen descriptions of init, forward multipliers and LR scales.

A parametrization answers, for one parameter described by (role, fan_in, fan_out): its init
std, the constant its layer multiplies the output by, and the per-parameter learning-rate,
weight-decay and Adam-epsilon scales. Layers consult it at init/apply time; the optimizer side
(`jaxlab.optim`, later issue) consults the same object, so the two cannot drift apart.
"""

import dataclasses
import math

from jaxlab.param import roles


@dataclasses.dataclass(frozen=True)
class Parametrization:
  """Standard parametrization (SP): PyTorch/Flax defaults, the reference all others reduce to.

  Init: weights ~ N(0, 1/fan_in) for every weight role (LeCun normal; for an embedding table
  fan_in is the vocabulary size), biases 0, norm gains 1. No forward multipliers, attention
  logits scaled by 1/sqrt(head_dim), residual branches unscaled, all optimizer scales 1.
  """

  name: str = "sp"

  def init_std(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    if role in (roles.BIAS, roles.NORM):
      return 0.0
    return 1.0 / math.sqrt(fan_in)

  def forward_multiplier(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    return 1.0

  def attention_scale(self, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)

  def residual_multiplier(self, num_layers: int) -> float:
    return 1.0

  def lr_scale(self, role: str, fan_in: int, fan_out: int, family: str = "adam") -> float:
    roles.check(role)
    return 1.0

  def weight_decay_scale(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    return 1.0

  def adam_eps_scale(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    return 1.0


SP = Parametrization

_REGISTRY = {"sp": SP}


def get(name: str, **kwargs) -> Parametrization:
  """`jaxlab.param.get("sp")`; later issues register ntk, mup, depth_mup, umup."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown parametrization {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name](**kwargs)
