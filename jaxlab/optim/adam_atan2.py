"""Adam-atan2 (Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers",
Sec. 4.3): Adam without epsilon, update = a * atan2(m_hat, b * sqrt(v_hat)).

atan2 equals m / sqrt(v) for |m| << sqrt(v), is bounded by a*pi/2, is 0 at m = v = 0 (no division
by zero), and is invariant to rescaling the gradients: the epsilon-vs-gradient-scale problem
that makes Adam's epsilon a width-dependent hyperparameter disappears.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim.parametrization import add_scaled_decayed_weights


class ScaleByAdamAtan2State(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam_atan2(b1: float = 0.9, b2: float = 0.999, a: float = 1.27,
                        b: float = 1.0) -> optax.GradientTransformation:
  """Bias-corrected Adam moments, then a * atan2(m_hat, b * sqrt(v_hat)) per coordinate."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return ScaleByAdamAtan2State(jnp.zeros([], jnp.int32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    out = jax.tree.map(lambda m, v: a * jnp.arctan2(m / c1, b * jnp.sqrt(v / c2)), mu, nu)
    return out, ScaleByAdamAtan2State(count, mu, nu)

  return optax.GradientTransformation(init, update)


def adam_atan2(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
               a: float = 1.27, b: float = 1.0,
               weight_decay: float = 0.0, decay: Any = None) -> optax.GradientTransformation:
  """Adam-atan2 with optional decoupled weight decay (as AdamW; `decay`: per-parameter factors,
  jaxlab.optim.decay_coefficients), then -learning_rate."""
  parts = [scale_by_adam_atan2(b1, b2, a, b)]
  decays = not isinstance(weight_decay, (int, float)) or weight_decay != 0  # traced: decays
  if decays and decay is not None:
    parts.append(add_scaled_decayed_weights(weight_decay, decay))
  elif decays:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
