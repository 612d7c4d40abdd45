"""Aligning the hidden units of model B to model A (Ainsworth, Hayase & Srinivasa 2023, "Git
Re-Basin"): weight matching, activation matching and the straight-through estimator.

Every method returns `perms` ({group: index array}, jaxlab.weights.permutation) such that
`apply_permutation(spec, perms, params_b)` computes the same function as params_b and lies close
to params_a. The convention: unit i of the permuted B is unit perms[g][i] of B.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.extend import core as jcore

from jaxlab.weights.permutation import (Analysis, PermutationSpec, apply_permutation, expr_size,
                                        groups_in, identity_permutation, path_str)


def unit_rows(x: jax.Array, axis: int, ex: Any, group: str, sizes: Mapping[str, int]) -> jax.Array:
  """x as a [units of `group`, rest] matrix: the entries that move with unit i form row i. The
  axis's Expr may be a product (heads x head_dim: a head's row holds its head_dim columns) or a
  concatenation (q | k | v: a head's row holds its entries from every part)."""
  if ex[0] == "perm":
    return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
  part_sizes = [expr_size(q, sizes) for q in ex[1]]
  if ex[0] == "concat":
    rows, start = [], 0
    for q, n in zip(ex[1], part_sizes):
      if group in groups_in(q):
        part = jax.lax.slice_in_dim(x, start, start + n, axis=axis)
        rows.append(unit_rows(part, axis, q, group, sizes))
      start += n
    return jnp.concatenate(rows, axis=1)
  x = x.reshape(x.shape[:axis] + tuple(part_sizes) + x.shape[axis + 1:])
  k = next(i for i, q in enumerate(ex[1]) if group in groups_in(q))
  return unit_rows(x, axis + k, ex[1][k], group, sizes)


def _flat(tree) -> dict[str, jax.Array]:
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _solve(cost: np.ndarray) -> np.ndarray:
  """The permutation maximising sum_i cost[i, perm[i]] (scipy's linear_sum_assignment)."""
  rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost, np.float64), maximize=True)
  perm = np.empty(len(rows), np.int64)
  perm[rows] = cols
  return perm


def weight_cost(spec: PermutationSpec, group: str, params_a: Any, params_b: Any) -> jax.Array:
  """sum over the parameters of <row i of A, row j of B> for `group` (B as given)."""
  a, b = _flat(params_a), _flat(params_b)
  n = spec.groups[group]
  cost = jnp.zeros((n, n), jnp.float32)
  for path, axis in spec.members(group):
    ex = spec.axes[path][axis]
    ra = unit_rows(a[path], axis, ex, group, spec.groups).astype(jnp.float32)
    rb = unit_rows(b[path], axis, ex, group, spec.groups).astype(jnp.float32)
    cost = cost + ra @ rb.T
  return cost


def weight_matching(spec: PermutationSpec, params_a: Any, params_b: Any, *, seed: int = 0,
                    max_iter: int = 100, init: Mapping[str, Any] | None = None,
                    groups: list[str] | None = None) -> dict[str, jax.Array]:
  """Git Re-Basin's weight matching (Alg. 1): coordinate descent over the groups, in a random
  order each sweep; each step solves the linear assignment of one group with the others held
  fixed, maximising sum_l <W_l^A, P_l W_l^B P_{l-1}^T>; stops after a sweep that changes
  nothing. `groups`: those to match (default `spec.outer_groups()`); the others keep `init`
  (default the identity)."""
  perms = {g: np.asarray(p) for g, p in (init or identity_permutation(spec)).items()}
  rng = np.random.default_rng(seed)
  names = list(spec.outer_groups() if groups is None else groups)
  for _ in range(max_iter):
    changed = False
    for g in rng.permutation(names):
      others = {h: p for h, p in perms.items() if h != g}
      b = apply_permutation(spec, others, params_b)
      cost = np.asarray(weight_cost(spec, g, params_a, b))
      new = _solve(cost)
      old = perms[g]
      if cost[np.arange(len(new)), new].sum() > cost[np.arange(len(old)), old].sum() + 1e-9 * (
          1 + abs(cost).max()):
        perms[g] = new
        changed = True
    if not changed:
      break
  return {g: jnp.asarray(p) for g, p in perms.items()}


def activations(analysis: Analysis, variables: Any, *inputs: Any) -> dict[str, list[jax.Array]]:
  """{group: [activations, one [samples, units] array per top-level array carrying the group]}
  of one forward pass (the traced program of `analysis`, evaluated on these variables/inputs,
  which must have the shapes it was traced with)."""
  closed = analysis.closed
  carriers = list(dict.fromkeys(v for v, _, _ in analysis.activation_axes))
  program = jcore.ClosedJaxpr(closed.jaxpr.replace(outvars=carriers), closed.consts)
  values = dict(zip(carriers, jax.jit(jcore.jaxpr_as_fun(program))(
      *jax.tree.leaves(variables), *jax.tree.leaves(inputs))))
  grouped_axes: dict = {}
  for v, axis, g in analysis.activation_axes:
    grouped_axes.setdefault(v, set()).add(axis)
  out: dict[str, list] = {}
  for v, axis, g in analysis.activation_axes:
    if len(grouped_axes[v]) > 1:  # samples must not mix units of another group
      continue
    x = values[v]
    out.setdefault(g, []).append(jnp.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]))
  return out


def correlation(za: jax.Array, zb: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Pearson correlation [units_a, units_b] between the columns of two [samples, units] arrays."""
  za = (za - za.mean(0)) / (za.std(0) + eps)
  zb = (zb - zb.mean(0)) / (zb.std(0) + eps)
  return za.T @ zb / za.shape[0]


def activation_matching(analysis: Analysis, variables_a: Any, variables_b: Any,
                        *inputs: Any, groups: list[str] | None = None) -> dict[str, jax.Array]:
  """Git Re-Basin's activation matching (Sec. 3.1; Li et al. 2016, Tatro et al. 2020): per group,
  the assignment maximising the summed correlation of unit activations on a batch. Every
  top-level array that carries the group's units on one axis and no other group's on the others
  (pre- and post-activation, every write to a residual stream, attention scores for heads) adds
  its correlation matrix. `groups`: as in weight_matching."""
  acts_a = activations(analysis, variables_a, *inputs)
  acts_b = activations(analysis, variables_b, *inputs)
  perms = identity_permutation(analysis.spec)
  wanted = analysis.spec.outer_groups() if groups is None else groups
  for g in wanted:
    if g in acts_a:
      cost = sum(correlation(a.astype(jnp.float32), b.astype(jnp.float32))
                 for a, b in zip(acts_a[g], acts_b[g]))
      perms[g] = jnp.asarray(_solve(np.nan_to_num(np.asarray(cost))))
  silent = [g for g in wanted if g not in acts_a]
  if silent:  # no top-level array carries them alone (heads inside a platform-dependent
    # attention call): matched by their weights, with the other groups as found above
    perms = weight_matching(analysis.spec, variables_a, variables_b, groups=silent, init=perms)
  return perms


def ste_matching(spec: PermutationSpec, params_a: Any, params_b: Any,
                 loss_fn: Callable[[Any, Any], jax.Array], batches, *,
                 learning_rate: float = 1e-3, seed: int = 0, init: Mapping[str, Any] | None = None
                 ) -> dict[str, jax.Array]:
  """Git Re-Basin's straight-through estimator (Alg. 2): learn W~ (init params_a); each step
  projects it onto the permutations of B (weight matching of W~ to B), and trains the midpoint
  (params_a + P(B)) / 2 on `loss_fn(params, batch)`, with the gradient passed straight through
  the projection to W~. Returns the permutation of the last projection.
  `batches`: an iterable of batches, one per step."""
  tx = optax.adam(learning_rate)
  learned = jax.tree.map(jnp.asarray, params_a)
  opt_state = tx.init(learned)
  perms = dict(init or identity_permutation(spec))

  @jax.jit
  def step(learned, opt_state, projected, batch):
    def loss(w):
      # forward with the projection, gradient straight through to w
      pb = jax.tree.map(lambda w_, p_: w_ + jax.lax.stop_gradient(p_ - w_), w, projected)
      mid = jax.tree.map(lambda a, b: 0.5 * (a + b), params_a, pb)
      return loss_fn(mid, batch)

    value, grads = jax.value_and_grad(loss)(learned)
    updates, opt_state = tx.update(grads, opt_state, learned)
    return optax.apply_updates(learned, updates), opt_state, value

  for i, batch in enumerate(batches):
    perms = weight_matching(spec, learned, params_b, seed=seed + i, init=perms)
    projected = apply_permutation(spec, perms, params_b)
    learned, opt_state, _ = step(learned, opt_state, projected, batch)
  return {g: jnp.asarray(p) for g, p in perms.items()}
