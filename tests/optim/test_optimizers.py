"""Schedules against their closed forms; optimizer choice and clipping from configs."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.errors import UserError
from jaxlab.optim import make_optimizer, make_schedule
from tests.optim.optim_configs import optim_config


cfg = optim_config


def test_warmup_then_cosine_matches_closed_form():
  sched = make_schedule(cfg(), num_steps=110)
  for step in range(0, 110, 7):
    if step < 10:
      expected = step / 10
    else:
      t = (step - 10) / 100
      expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    assert float(sched(step)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_linear_and_constant_schedules():
  lin = make_schedule(cfg(schedule="linear", warmup_steps=0, min_lr_ratio=0.0), num_steps=100)
  assert float(lin(25)) == pytest.approx(0.75)
  const = make_schedule(cfg(schedule="constant", warmup_steps=0), num_steps=100)
  assert float(const(99)) == 1.0


def test_sgd_step_is_minus_lr_times_grad_and_clip_bounds_norm():
  tx = make_optimizer(cfg(name="sgd", schedule="constant", warmup_steps=0, learning_rate=0.5), 10)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.array([1.0, 2.0, 3.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.5, -1.0, -1.5])
  tx = make_optimizer(cfg(name="sgd", schedule="constant", warmup_steps=0, grad_clip=1.0), 10)
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0, 0.0])}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-6)


def test_bad_names_are_named_in_the_error():
  with pytest.raises(UserError, match="config.optim.name='adamx'"):
    make_optimizer(cfg(name="adamx"), 10)
  with pytest.raises(UserError, match="config.optim.schedule"):
    make_schedule(cfg(schedule="cosine_restarts"), 10)


@pytest.mark.parametrize("name", ["adamw", "lion", "adam_atan2"])
def test_per_parameter_decay_factors(name):
  """make_optimizer(decay=...): with zero gradients the update is the decay alone,
  -lr * wd * factor * p per parameter; with factors of 1 it equals the optimizer without them."""
  c = cfg(name=name, schedule="constant", warmup_steps=0, learning_rate=0.5, weight_decay=0.1)
  params = {"a": jnp.full((3,), 2.0), "b": jnp.full((2,), -1.0)}
  zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
  tx = make_optimizer(c, 10, decay={"a": 4.0, "b": 0.25})
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -0.5 * 0.1 * 4.0 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -0.5 * 0.1 * 0.25 * -1.0, rtol=1e-6)
  grads = {"a": jnp.array([0.3, -1.0, 2.0]), "b": jnp.array([0.5, 0.0])}
  ones, plain = make_optimizer(c, 10, decay={"a": 1.0, "b": 1.0}), make_optimizer(c, 10)
  for k in params:
    np.testing.assert_array_equal(ones.update(grads, ones.init(params), params)[0][k],
                                  plain.update(grads, plain.init(params), params)[0][k])
