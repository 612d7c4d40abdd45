"""Alignment: weight matching, activation matching and STE on the four model families."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.weights import matching as M
from jaxlab.weights import permutation as P
from tests.weights.test_permutation import FAMILIES, build


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _assert_identity(spec, perms):
  for g, p in perms.items():
    np.testing.assert_array_equal(p, np.arange(spec.groups[g]), err_msg=g)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_aligned_to_itself_is_the_identity(family):
  model, v, x = build(family)
  analysis = P.analyse(model.apply, v, x)
  _assert_identity(analysis.spec, M.weight_matching(analysis.spec, v, v))
  _assert_identity(analysis.spec, M.activation_matching(analysis, v, v, x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_permuted_copy_is_recovered(family):
  """B = A with its hidden units (outer groups) shuffled: both methods find the permutation that
  maps B back onto A exactly."""
  model, v, x = build(family)
  analysis = P.analyse(model.apply, v, x)
  spec = analysis.spec
  shuffle = {g: p for g, p in P.random_permutation(spec, jax.random.PRNGKey(5)).items()
             if g in spec.outer_groups()}
  b = P.apply_permutation(spec, shuffle, v)
  for perms in (M.weight_matching(spec, v, b), M.activation_matching(analysis, v, b, x)):
    _assert_same(P.apply_permutation(spec, perms, b), v)


def test_weight_matching_aligns_independent_mlps():
  """Two inits: the matched B computes B's function, and its inner product with A is the
  largest over coordinate moves (no single group's reassignment improves it)."""
  model, a, x = build("mlp", seed=0)
  _, b, _ = build("mlp", seed=1)
  spec = P.permutation_spec(model.apply, a, x)
  perms = M.weight_matching(spec, a, b)
  matched = P.apply_permutation(spec, perms, b)
  np.testing.assert_allclose(model.apply(matched, x), model.apply(b, x), rtol=1e-5, atol=1e-5)

  def dot(u, w):
    return sum(float(jnp.vdot(p, q)) for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(w)))

  assert dot(a, matched) > dot(a, b) + 1.0
  for g in spec.groups:  # a fixed point of the coordinate descent
    others = {h: p for h, p in perms.items() if h != g}
    cost = np.asarray(M.weight_cost(spec, g, a, P.apply_permutation(spec, others, b)))
    best = cost[np.arange(len(perms[g])), M._solve(cost)].sum()  # pylint: disable=protected-access
    assert cost[np.arange(len(perms[g])), np.asarray(perms[g])].sum() >= best - 1e-3 * abs(best)


def test_correlation_is_pearson():
  rng = np.random.default_rng(0)
  za, zb = rng.normal(size=(200, 3)), rng.normal(size=(200, 4))
  want = np.corrcoef(za.T, zb.T)[:3, 3:]
  np.testing.assert_allclose(M.correlation(jnp.asarray(za), jnp.asarray(zb)), want, atol=1e-4)


def test_ste_matching_recovers_a_permuted_copy_and_returns_permutations():
  model, a, x = build("mlp", seed=0)
  spec = P.permutation_spec(model.apply, a, x)
  shuffle = P.random_permutation(spec, jax.random.PRNGKey(2))
  b = P.apply_permutation(spec, shuffle, a)
  target = model.apply(a, x)

  def loss_fn(params, batch):
    return jnp.mean((model.apply(params, batch) - target) ** 2)

  perms = M.ste_matching(spec, a, b, loss_fn, [x] * 3, learning_rate=1e-3)
  _assert_same(P.apply_permutation(spec, perms, b), a)
  _, c, _ = build("mlp", seed=3)
  perms = M.ste_matching(spec, a, c, loss_fn, [x] * 3, learning_rate=1e-2)
  for g, p in perms.items():
    assert sorted(np.asarray(p).tolist()) == list(range(spec.groups[g]))
