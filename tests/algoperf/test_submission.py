"""Submissions: the warmup schedules in closed form, and every zoo optimizer's searched
hyperparameters working as traced (vmapped) scalars."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.algoperf import submission
from jaxlab.errors import UserError
from jaxlab.optim import zoo


def test_warmup_cosine_closed_form():
  f = submission.warmup_schedule(2.0, 0.1, 100)  # warmup 10 steps, cosine over 90
  for t, want in [(0, 0.0), (5, 1.0), (10, 2.0), (55, 1.0), (100, 0.0),
                  (32, 2.0 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))]:
    np.testing.assert_allclose(float(f(t)), want, rtol=1e-6, atol=1e-7, err_msg=f"t={t}")


def test_warmup_constant_and_short_warmup():
  f = submission.warmup_schedule(3.0, 0.2, 50, "warmup_constant")
  assert [float(f(t)) for t in (0, 5, 10, 49)] == [0.0, 1.5, 3.0, 3.0]
  g = submission.warmup_schedule(1.0, 0.0, 20)  # at least one warmup step
  assert float(g(0)) == 0.0 and float(g(1)) == 1.0
  with pytest.raises(UserError, match="'linear'.*warmup_cosine, warmup_constant"):
    submission.warmup_schedule(1.0, 0.1, 10, "linear")


def _midpoint(space):
  return {k: float(np.sqrt(lo * hi) if scale == "log" else (lo + hi) / 2)
          for k, (lo, hi, scale) in space.items()}


@pytest.mark.parametrize("name", list(zoo.OPTIMIZERS))
def test_vmapped_trials_equal_separate_trials(name):
  """Two trials (different searched hyperparameters) vmapped in one program take the same 3
  steps as each built from Python floats."""
  sub = submission.from_zoo(name)
  assert {"learning_rate", "warmup_fraction"} <= set(sub.search_space)
  mid = _midpoint(sub.search_space)
  trials = [mid, {k: v * (0.9 if k != "warmup_fraction" else 1.5) for k, v in mid.items()}]
  rng = np.random.default_rng(0)
  # square: full-rank gradients, so Shampoo's / SOAP's eigenbases have no degenerate subspace
  params = {"w": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
  grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params) for i in range(3)]

  def train(hp):
    tx = sub.make(hp, 10)
    p, state = params, tx.init(params)
    for g in grads:
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    return p

  vmapped = jax.jit(jax.vmap(train))(submission.stack_hparams(trials))
  for k, hp in enumerate(trials):
    alone = jax.jit(train)(hp)
    jax.tree.map(lambda a, b, k=k: np.testing.assert_allclose(a[k], b, rtol=2e-5, atol=1e-6),
                 vmapped, alone)
  moved = jax.tree.map(lambda a, p: float(jnp.abs(a[0] - p).max()), vmapped, params)
  assert max(jax.tree.leaves(moved)) > 0  # 3 steps past warmup's zero LR step moved the params


def test_defaults_cover_the_search_space_and_missing_names_are_errors():
  for name in zoo.OPTIMIZERS:
    sub = submission.from_zoo(name)
    assert set(sub.search_space) <= set(sub.defaults)
  sub = submission.from_zoo("adamw")
  with pytest.raises(UserError, match="adamw.*'b2'"):
    sub.make({"learning_rate": 1e-3, "b1": 0.9, "weight_decay": 0.0, "warmup_fraction": 0.05},
             10)
  with pytest.raises(UserError, match="unknown optimizer 'adamx'"):
    submission.from_zoo("adamx")


def test_lr_scale_shifts_the_learning_rate_range_and_default():
  for name in ("adamw", "lars"):
    low, high, spacing = zoo.get(name).search_space["learning_rate"]
    sub = submission.from_zoo(name, lr_scale=4.0)
    assert sub.search_space["learning_rate"] == (4 * low, 4 * high, spacing)
    assert sub.defaults["learning_rate"] == 4 * submission.DEFAULT_LR[name]
    rest = {k: v for k, v in sub.search_space.items() if k != "learning_rate"}
    assert rest == {k: v for k, v in submission.from_zoo(name).search_space.items()
                    if k != "learning_rate"}
  with pytest.raises(UserError, match="--lr_scale=0"):
    submission.from_zoo("adamw", lr_scale=0.0)
