"""`scale_by_parametrization`: the optimizer side of a parametrization, as one optax transform.

Placed last in any chain, it multiplies each parameter's update by the parametrization's
learning-rate scale for that parameter's role and fans (e.g. muP + Adam: hidden weights x 1/m),
so `optax.chain(optax.adamw(lr), scale_by_parametrization(p, info))` is all a user writes.
"""

from typing import Any

import jax
import optax

from jaxlab.errors import UserError
from jaxlab.param.base import Parametrization
from jaxlab.param.meta import ParamInfo

FAMILIES = {"adamw": "adam", "adam": "adam", "adam_atan2": "adam", "lion": "adam", "sgd": "sgd",
            "nadamw": "adam", "schedule_free_adamw": "adam", "sgd_nesterov": "sgd",
            # jaxlab.optim.zoo entries whose per-parameter LR under muP-like rules is not the Adam
            # or SGD one (layer-wise trust ratios, matrix preconditioners, relative steps):
            "lamb": "none", "lars": "none", "muon": "none", "shampoo": "none", "soap": "none",
            "adafactor": "none"}
WITH_EPSILON = ("adamw", "adam")  # optimizers whose update has an epsilon to rescale


def optimizer_family(name: str) -> str:
  """'adam' for sign/scale-invariant updates (Adam, AdamW, NAdamW, Adam-atan2, Lion,
  schedule-free AdamW), 'sgd' for SGD (with or without Nesterov), 'none' for optimizers no
  parametrization here has a learning-rate rule for (only SP, whose scales are all 1, takes
  them: `check_family`)."""
  if name not in FAMILIES:
    raise UserError(f"config.optim.name={name!r}: no parametrization LR rule for this optimizer; "
                    f"valid: {', '.join(sorted(FAMILIES))}")
  return FAMILIES[name]


def check_family(name: str, p: Parametrization, info: Any) -> str:
  """optimizer_family(name), as the family to scale by; a 'none' optimizer only with a
  parametrization whose learning-rate and weight-decay scales are all 1 (SP)."""
  family = optimizer_family(name)
  if family != "none":
    return family
  if any(s != 1.0 for s in jax.tree.leaves(lr_scales(p, info, "adam"))) or (
      decay_coefficients(p, info, "adam") is not None):
    raise UserError(f"config.optim.name={name!r} has no per-parameter learning-rate rule under "
                    f"this parametrization ({type(p).__name__}); use config.param.name='sp', or "
                    f"an optimizer of the adam or sgd family: "
                    f"{', '.join(sorted(n for n, f in FAMILIES.items() if f != 'none'))}")
  return "adam"  # every scale is 1: the family only names the rule


def _per_param(fn, info: Any) -> Any:
  return jax.tree.map(fn, info, is_leaf=lambda x: isinstance(x, ParamInfo))


def lr_scales(p: Parametrization, info: Any, family: str) -> Any:
  """Tree of per-parameter LR multipliers (floats), shaped like `info` (a param_info tree)."""
  return _per_param(lambda i: p.lr_scale(i, family), info)


def weight_decay_scales(p: Parametrization, info: Any, family: str) -> Any:
  """Tree of per-parameter decay multipliers: each parameter decays by lr * wd * scale per step."""
  return _per_param(lambda i: p.weight_decay_scale(i, family), info)


def adam_eps_scales(p: Parametrization, info: Any) -> Any:
  """Tree of per-parameter Adam-epsilon multipliers."""
  return _per_param(p.adam_eps_scale, info)


def decay_coefficients(p: Parametrization, info: Any, family: str) -> Any | None:
  """Tree of the factors the optimizer's weight decay is multiplied by *before*
  scale_by_parametrization multiplies the whole update by the LR scale: weight_decay_scale /
  lr_scale, so each parameter decays by lr * wd * weight_decay_scale. None when all are 1."""
  coeffs = _per_param(lambda i: p.weight_decay_scale(i, family) / p.lr_scale(i, family), info)
  return None if all(c == 1.0 for c in jax.tree.leaves(coeffs)) else coeffs


def scale_by_parametrization(p: Parametrization, info: Any,
                             family: str = "adam") -> optax.GradientTransformation:
  """Multiplies each update by `p.lr_scale(info, family)`; stateless."""
  scales = lr_scales(p, info, family)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u if s == 1.0 else u * s, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_adam_eps_by_parametrization(p: Parametrization,
                                      info: Any) -> optax.GradientTransformation | None:
  """Per-parameter Adam epsilon, eps_i = eps * p.adam_eps_scale(role, fans), as a stateless
  transform placed right before Adam: Adam is invariant to rescaling a parameter's gradient
  except through epsilon, so dividing the gradient by s gives exactly
  m_hat / (sqrt(v_hat) + eps * s). None when every scale is 1."""
  scales = adam_eps_scales(p, info)
  if all(s == 1.0 for s in jax.tree.leaves(scales)):
    return None

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda g, s: g if s == 1.0 else g / s, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def add_scaled_decayed_weights(weight_decay: float,
                               coefficients: Any) -> optax.GradientTransformation:
  """optax.add_decayed_weights with a per-parameter factor: u + (weight_decay * c) * p, c from
  `decay_coefficients` (a tree of floats shaped like the params); stateless."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("add_scaled_decayed_weights needs the params: call "
                       "tx.update(grads, state, params)")
    return jax.tree.map(lambda u, p, c: u + (weight_decay * c) * p, updates, params,
                        coefficients), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
