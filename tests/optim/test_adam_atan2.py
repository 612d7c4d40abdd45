"""Adam-atan2 against a plain-numpy reference of Everett et al. (2024)'s update rule."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.optim import adam_atan2, make_optimizer, scale_by_adam_atan2


def reference_updates(grads, lr, b1=0.9, b2=0.999, a=1.27, b=1.0, wd=0.0, params=None):
  """Per-step updates of a*atan2(m_hat, b*sqrt(v_hat)) (+ wd * p), times -lr, in float64."""
  m = np.zeros_like(grads[0], np.float64)
  v = np.zeros_like(grads[0], np.float64)
  p = None if params is None else np.asarray(params, np.float64)
  out = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = a * np.arctan2(m / (1 - b1**t), b * np.sqrt(v / (1 - b2**t)))
    if wd:
      u = u + wd * p
    u = -lr * u
    out.append(u)
    if p is not None:
      p = p + u
  return out


def run(tx, grads, params):
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return out


GRADS = [np.random.default_rng(s).standard_normal(7).astype(np.float32) * 10.0**(s - 2)
         for s in range(5)]


def test_matches_reference_over_several_steps():
  params = jnp.linspace(-1, 1, 7)
  ours = run(adam_atan2(0.1), GRADS, params)
  for u, r in zip(ours, reference_updates(GRADS, 0.1)):
    np.testing.assert_allclose(u, r, rtol=1e-5, atol=1e-7)


def test_weight_decay_is_decoupled():
  params = jnp.linspace(-1, 1, 7)
  ours = run(adam_atan2(0.1, weight_decay=0.01), GRADS, params)
  for u, r in zip(ours, reference_updates(GRADS, 0.1, wd=0.01, params=params)):
    np.testing.assert_allclose(u, r, rtol=1e-5, atol=1e-7)


def test_invariant_to_gradient_scale_and_finite_at_zero():
  tx = scale_by_adam_atan2()
  params = jnp.zeros(7)
  small = run(tx, [g * 1e-10 for g in GRADS], params)  # squares stay normal f32 numbers
  large = run(tx, [g * 1e+6 for g in GRADS], params)
  for s, l in zip(small, large):
    np.testing.assert_allclose(s, l, rtol=1e-5)
  zero = run(tx, [np.zeros(7, np.float32)], params)[0]
  np.testing.assert_array_equal(zero, np.zeros(7))
  assert float(jnp.max(jnp.abs(large[0]))) <= 1.27 * math.pi / 2 + 1e-6


def test_available_from_config_by_name():
  cfg = ml_collections.ConfigDict({"name": "adam_atan2", "learning_rate": 0.1, "schedule": "constant",
                                   "warmup_steps": 0, "weight_decay": 0.0, "b1": 0.9, "b2": 0.999,
                                   "eps": 1e-8, "grad_clip": 0.0})
  ours = run(make_optimizer(cfg, 10), GRADS, jnp.zeros(7))
  for u, r in zip(ours, reference_updates(GRADS, 0.1)):
    np.testing.assert_allclose(u, r, rtol=1e-5, atol=1e-7)
