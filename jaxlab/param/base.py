"""Parametrizations as pure, frozen descriptions of init, forward multipliers and LR scales.

A parametrization answers, for one parameter described by (role, fan_in, fan_out): its init
std, the constant its layer multiplies the output by, and the per-parameter learning-rate,
weight-decay and Adam-epsilon scales. Layers consult it at init/apply time; the optimizer side
(`jaxlab.optim`, later issue) consults the same object, so the two cannot drift apart.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax

from jaxlab.errors import UserError
from jaxlab.param import roles
from jaxlab.param.meta import ParamInfo


class OpScales(NamedTuple):
  """Scales a layer applies around one weight op y = op(x, W) (unit scaling's scale_fwd /
  scale_bwd split): `out` multiplies y in the forward pass only, `grad_in` multiplies the
  cotangent reaching x, `grad_param` the cotangent reaching W. When all three are equal the op
  is the ordinary y = out * op(x, W) and autodiff gives the true gradient."""

  out: float
  grad_in: float
  grad_param: float


REGISTRY: dict[str, type] = {}
"""Every parametrization by its `name`: a subclass that sets its own `name` default registers
itself when it is defined (jaxlab.param.get looks names up here)."""


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

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if "name" in cls.__dict__:  # a class body setting `name: str = "..."`
      REGISTRY[cls.__dict__["name"]] = cls

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
      raise UserError(f"model width must be positive and depth >= 0, got {width}, {depth} "
                      "(config.model's width and depth keys)")
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

  # --- optimizer side: each takes the parameter's ParamInfo (role, fans, axes, in_block) ---

  def lr_scale(self, info: ParamInfo, family: str = "adam") -> float:
    """Multiplier of the global learning rate for this parameter; `family` is 'adam' (Adam,
    AdamW, Adam-atan2, Lion) or 'sgd'."""
    roles.check(info.role)
    return 1.0

  def weight_decay_scale(self, info: ParamInfo, family: str = "adam") -> float:
    """The per-step decay of this parameter as a multiple of lr * weight_decay (jaxlab.optim
    applies it whatever lr_scale is). SP: 1."""
    roles.check(info.role)
    return 1.0

  def adam_eps_scale(self, info: ParamInfo) -> float:
    """Multiplier of Adam's epsilon for this parameter (applied by
    jaxlab.optim.scale_adam_eps_by_parametrization)."""
    roles.check(info.role)
    return 1.0

  # --- hooks for parametrizations that move scale into the ops (u-muP); SP-family defaults ---

  def op_scales(self, role: str, fan_in: int, fan_out: int, batch: int) -> OpScales:
    """Forward / backward scales around the weight op of a parameter of this role; `batch` is
    the number of rows the op reduces over in the weight gradient."""
    m = self.forward_multiplier(role, fan_in, fan_out)
    return OpScales(m, m, m)

  def lookup_scales(self, num_rows: int, features: int, lookups: int) -> OpScales:
    """Scales around a table lookup (embeddings, learned positions): `num_rows` rows of width
    `features` read `lookups` times in total; `grad_in` is unused (ids have no gradient)."""
    m = self.forward_multiplier(roles.INPUT, num_rows, features)
    return OpScales(m, m, m)

  def activation_scale(self, f: Callable[[jax.Array], jax.Array]) -> float:
    """Constant multiplying an elementwise nonlinearity's output (and so its input gradient)."""
    return 1.0

  def attention_output_scale(self, seq_len: int, head_dim: int, causal: bool) -> float:
    """Scale applied to the attention output in the forward pass and to the q/k/v cotangents
    in the backward pass (1 = plain attention)."""
    return 1.0

  def residual(self, x: jax.Array, branch: Callable[[jax.Array], jax.Array], *, layer: int,
               num_layers: int, branch_index: int = 0, branches_per_layer: int = 1,
               shortcut: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """The residual update of one branch (a block has one per sublayer): s(x) + r * branch(x)
    with r = residual_multiplier(num_layers) and s the shortcut (identity unless given, e.g. a
    ResNet's projection). u-muP replaces it with a weighted add."""
    del layer, branch_index, branches_per_layer
    h = branch(x)
    r = self.residual_multiplier(num_layers)
    s = x if shortcut is None else shortcut(x)
    return s + (h if r == 1.0 else h * r)


SP = Parametrization
REGISTRY[SP.name] = SP


@dataclasses.dataclass(frozen=True)
class NTK(Parametrization):
  """Neural-tangent parametrization (Jacot et al. 2018; Everett et al. 2024, Table 1: a = 1/2,
  b = 0 for hidden and readout weights) relative to the base width: weights whose fan-in grows
  with width (hidden, readout) keep their base-width init std sqrt(m) / sqrt(fan_in) and are
  multiplied by 1/sqrt(m) in the forward pass, so the function at init is SP's while a global
  learning rate moves them ~1/sqrt(m) (Adam) or ~1/m (SGD) less than SP does. Input weights,
  biases and gains are SP. All optimizer scales are 1 (one global LR, as in NTK training).
  """

  name: str = "ntk"

  def _grows(self, role: str) -> bool:
    return roles.check(role) in (roles.HIDDEN, roles.READOUT)

  def init_std(self, role: str, fan_in: int, fan_out: int) -> float:
    std = super().init_std(role, fan_in, fan_out)
    return std * math.sqrt(self.width_mult) if self._grows(role) else std

  def forward_multiplier(self, role: str, fan_in: int, fan_out: int) -> float:
    return 1.0 / math.sqrt(self.width_mult) if self._grows(role) else 1.0


@dataclasses.dataclass(frozen=True)
class PerLayerSP(Parametrization):
  """SP init and forward with per-layer learning-rate exponents (Everett et al. 2024, "Scaling
  Exponents Across Parameterizations and Optimizers", SP + Adam under full alignment): Adam LR
  x 1 for input weights, biases and gains and x 1/m for hidden and readout weights; Adam
  epsilon scaled like each parameter's gradient at init (x 1/sqrt(m) for everything upstream of
  the readout, whose init std is 1/sqrt(width); x 1 for the readout), so that epsilon does not
  swamp the shrinking gradients of wide models (their Section 5). Weight decay: lr * wd per
  step for every parameter, whatever its LR scale (the base rule; muP's 'independent'). Adam
  family only.
  """

  name: str = "sp_perlayer"

  def lr_scale(self, info: ParamInfo, family: str = "adam") -> float:
    roles.check(info.role)
    if family != "adam":
      raise UserError(f"config.param.name='sp_perlayer' prescribes Adam-family learning rates "
                      f"only (got optimizer family {family!r}, config.optim.name); use 'sp' or "
                      "'mup' with SGD")
    return 1.0 / self.width_mult if info.role in (roles.HIDDEN, roles.READOUT) else 1.0

  def adam_eps_scale(self, info: ParamInfo) -> float:
    roles.check(info.role)
    return 1.0 if info.role == roles.READOUT else 1.0 / math.sqrt(self.width_mult)


WD_CONVENTIONS = ("independent", "coupled")


def check_wd_convention(value: str) -> None:
  if value not in WD_CONVENTIONS:
    raise UserError(f"config.param.wd_convention={value!r}; valid: independent (the decay per "
                    "step does not depend on width: microsoft/mup MuAdamW, the CompleteP "
                    "reference, unit_scaling), coupled (decay x the parameter's LR scale, "
                    "lr * wd: nanoGPT-mup master)")


@dataclasses.dataclass(frozen=True)
class MuP(Parametrization):
  """Maximal-update parametrization (Yang et al. 2022, Tensor Programs V), in the form of its
  Table 8 / the microsoft/mup package (MuReadout, MuAdam, MuSGD): relative to SP at the base
  width,

    readout: forward multiplier 1/m, init std kept at its base value (sqrt(m) / sqrt(fan_in)),
             or exactly 0 with zero_readout=True;
    attention logits: scale sqrt(base head_dim) / head_dim (1/d instead of 1/sqrt(d); assumes
             head_dim grows with width, heads fixed);
    Adam LR: hidden (matrix-like, two width-sized dims) x 1/m; everything else x 1 (MuAdam);
    SGD LR:  parameters with one width-sized dim (input weights, readout weight, biases and
             gains of width-sized layers) x m; hidden x 1 (fan_in/fan_out ratio 1); parameters
             with none (the readout bias, scalar gains) x 1 (MuSGD's fixed group);
    weight decay (wd_convention): 'independent' (default) decays every parameter by
             lr * wd per step whatever its LR scale (MuAdamW: wd x m where the LR is / m);
             'coupled' decays by lr_scale * lr * wd (nanoGPT-mup master);
    Adam epsilon: not rescaled (as in microsoft/mup).

  Everything else is SP.
  """

  name: str = "mup"
  zero_readout: bool = False
  wd_convention: str = "independent"

  def __post_init__(self):
    check_wd_convention(self.wd_convention)

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

  def width_lr_scale(self, info: ParamInfo, family: str) -> float:
    """The width part of the LR scale (MuAdam / MuSGD)."""
    role, m = roles.check(info.role), self.width_mult
    if family == "adam":
      return 1.0 / m if role == roles.HIDDEN else 1.0
    if family == "sgd":
      vector_like = role in (roles.BIAS, roles.NORM)
      if role == roles.HIDDEN or (vector_like and not info.width_sized):
        return 1.0
      return m
    raise ValueError(f"optimizer family {family!r}; valid: adam, sgd")

  def depth_lr_scale(self, info: ParamInfo, family: str) -> float:
    """The depth part of the LR scale (1 here; depth-muP overrides)."""
    return 1.0

  def lr_scale(self, info: ParamInfo, family: str = "adam") -> float:
    return self.width_lr_scale(info, family) * self.depth_lr_scale(info, family)

  def weight_decay_scale(self, info: ParamInfo, family: str = "adam") -> float:
    if self.wd_convention == "coupled":
      return self.lr_scale(info, family)
    return self.depth_lr_scale(info, family)


@dataclasses.dataclass(frozen=True)
class DepthMuP(MuP):
  """muP plus depth scaling of residual networks (Bordelon et al. 2023, "Depthwise
  Hyperparameter Transfer in Residual Networks"; Yang et al. 2023; in the form of the CompleteP
  reference, Dey et al. 2025, nanoGPT-mup `completep` branch, with its depth_alpha_exp = alpha):

    every residual branch x (L / L_base)^-alpha, L = number of residual blocks;
    Adam LR: every parameter inside the residual blocks (hidden weights, and the norm gains and
        biases there) x (L / L_base)^(alpha - 1) on top of muP's width scale; embedding,
        final norm and readout x 1;
    weight decay: 'independent' keeps lr * wd per step in width but follows the depth LR scale
        (the reference's hidden wd is wd x m, its LR x L^(alpha-1) / m); 'coupled': lr_scale;
    Adam epsilon: x (1/m) (L / L_base)^-alpha for every parameter (the reference scales the
        optimizer's one epsilon);
    SGD: muP's width rules, no depth scale.

  alpha = 1/2 here; alpha = 1 is CompleteP. At L = L_base and m = 1 it is SP exactly.
  """

  name: str = "depth_mup"
  alpha: float = 0.5

  def residual_multiplier(self, num_layers: int) -> float:
    if not self.base_depth:
      return 1.0
    return (num_layers / self.base_depth) ** -self.alpha

  def depth_lr_scale(self, info: ParamInfo, family: str) -> float:
    if family == "adam" and info.in_block:
      return self.depth_mult ** (self.alpha - 1.0)
    return 1.0

  def adam_eps_scale(self, info: ParamInfo) -> float:
    roles.check(info.role)
    return self.depth_mult ** -self.alpha / self.width_mult


@dataclasses.dataclass(frozen=True)
class CompleteP(DepthMuP):
  """Depth-muP with alpha = 1 ("CompleteP", Dey et al. 2025): residual branches x (L/L_base)^-1,
  learning rates unscaled in depth, Adam epsilon x (1/m) (L/L_base)^-1."""

  name: str = "completep"
  alpha: float = 1.0
