"""Parametrizations as pure, frozen descriptions of init, forward multipliers and LR scales.

A parametrization answers, for one parameter described by (role, fan_in, fan_out): its init
std, the constant its layer multiplies the output by, and the per-parameter learning-rate,
weight-decay and Adam-epsilon scales. Layers consult it at init/apply time; the optimizer side
(`jaxlab.optim`, later issue) consults the same object, so the two cannot drift apart.
"""

import dataclasses
import functools
import math

from jaxlab.param import roles


@dataclasses.dataclass(frozen=True)
class Parametrization:
  """Standard parametrization (SP): PyTorch/Flax defaults, the reference all others reduce to.

  Init: weights ~ N(0, 1/fan_in) for every weight role (LeCun normal; for an embedding table
  fan_in is the vocabulary size), biases 0, norm gains 1. No forward multipliers, attention
  logits scaled by 1/sqrt(head_dim), residual branches unscaled, all optimizer scales 1.

  Width-aware parametrizations compare the model to a base model: `base_width` (0 = the model
  itself) and `width` (the model's, filled in by `resolve`), giving the width multiplier
  m = width / base_width. At m = 1 every parametrization equals SP exactly.
  """

  name: str = "sp"
  base_width: int = 0
  width: int = 0
  base_depth: int = 0
  depth: int = 0

  @property
  def width_mult(self) -> float:
    if not self.base_width or not self.width:
      return 1.0
    return self.width / self.base_width

  @property
  def depth_mult(self) -> float:
    if not self.base_depth or not self.depth:
      return 1.0
    return self.depth / self.base_depth

  def resolve(self, width: int, depth: int = 0) -> "Parametrization":
    """This parametrization for a model of the given width (e.g. d_model, hidden width) and
    depth (number of residual blocks; 0 = unknown, depth multiplier 1)."""
    if width <= 0 or depth < 0:
      raise ValueError(f"model width must be positive and depth >= 0, got {width}, {depth}")
    return dataclasses.replace(self, width=int(width), depth=int(depth))

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


@dataclasses.dataclass(frozen=True)
class MuP(Parametrization):
  """Maximal-update parametrization (Yang et al. 2022, Tensor Programs V), in the form of its
  Table 8 / the microsoft/mup package: relative to SP at the base width,

    readout: forward multiplier 1/m, init std kept at its base value (sqrt(m) / sqrt(fan_in)),
             or exactly 0 with zero_readout=True;
    attention logits: scale sqrt(base head_dim) / head_dim (1/d instead of 1/sqrt(d); assumes
             head_dim grows with width, heads fixed);
    Adam LR: hidden (matrix-like) x 1/m; input, readout, biases, norm gains x 1;
    SGD LR:  input, readout, biases, norm gains (one width-sized dim) x m; hidden x 1.

  Everything else is SP. Weight decay is scaled with the LR (decoupled, as optax.adamw applies
  it inside the update); Adam epsilon is not rescaled (as in microsoft/mup).
  """

  name: str = "mup"
  zero_readout: bool = False

  def init_std(self, role: str, fan_in: int, fan_out: int) -> float:
    if role == roles.READOUT:
      return 0.0 if self.zero_readout else super().init_std(role, fan_in, fan_out) * math.sqrt(
          self.width_mult)
    return super().init_std(role, fan_in, fan_out)

  def forward_multiplier(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    return 1.0 / self.width_mult if role == roles.READOUT else 1.0

  def attention_scale(self, head_dim: int) -> float:
    return 1.0 / (math.sqrt(head_dim) * math.sqrt(self.width_mult))

  def lr_scale(self, role: str, fan_in: int, fan_out: int, family: str = "adam") -> float:
    roles.check(role)
    m = self.width_mult
    if family == "adam":
      return 1.0 / m if role == roles.HIDDEN else 1.0
    if family == "sgd":
      return 1.0 if role == roles.HIDDEN else m
    raise ValueError(f"optimizer family {family!r}; valid: adam, sgd")


@dataclasses.dataclass(frozen=True)
class DepthMuP(MuP):
  """muP plus depth scaling of residual networks: every residual branch is multiplied by
  (L / L_base)^-alpha and hidden (matrix-like) Adam learning rates by (L / L_base)^(alpha - 1),
  alpha = 1/2 (Bordelon et al. 2023, "Depthwise Hyperparameter Transfer in Residual Networks";
  Yang et al. 2023) or alpha = 1 ("CompleteP"). L = number of residual blocks. At L = L_base and
  m = 1 it is SP exactly. (The matching Adam-epsilon rule, eps x m^-1 (L/L_base)^-alpha, needs a
  per-parameter epsilon inside Adam and is not applied yet.)
  """

  name: str = "depth_mup"
  alpha: float = 0.5

  def residual_multiplier(self, num_layers: int) -> float:
    if not self.base_depth:
      return 1.0
    return (num_layers / self.base_depth) ** -self.alpha

  def lr_scale(self, role: str, fan_in: int, fan_out: int, family: str = "adam") -> float:
    scale = super().lr_scale(role, fan_in, fan_out, family)
    if family == "adam" and role == roles.HIDDEN:
      scale *= self.depth_mult ** (self.alpha - 1.0)
    return scale


_REGISTRY = {"sp": SP, "mup": MuP, "depth_mup": DepthMuP,
             "completep": functools.partial(DepthMuP, name="completep", alpha=1.0)}


def get(name: str, **kwargs) -> Parametrization:
  """`jaxlab.param.get("mup", base_width=64)`, `get("depth_mup", base_width=64, base_depth=2)`;
  NTK and u-muP are still to come."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown parametrization {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
  cls = _REGISTRY[name]
  fields = dataclasses.fields(cls.func if isinstance(cls, functools.partial) else cls)
  valid = {f.name for f in fields} - {"name", "width", "depth"}
  unknown = set(kwargs) - valid
  if unknown:
    raise ValueError(f"parametrization {name!r} has no option(s) {sorted(unknown)}; "
                     f"valid: {sorted(valid)}")
  return cls(**kwargs)
