"""Blocked Shampoo with Adam grafting against a plain-numpy loop over blocks (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.optim.shampoo import shampoo
from tests.optim.blocked_problem import run, tiny_problem

SHAPES = {"w": (6, 4), "k": (2, 3, 2), "b": (4,)}
B1, B2, EPS, MATRIX_EPS, WD = 0.9, 0.999, 1e-8, 1e-6, 0.1


def inverse_root(s, p):
  w, v = np.linalg.eigh(s)
  w = np.maximum(w, 0.0)
  if w.max() <= 0:
    return np.eye(len(s))
  return (v * (w + MATRIX_EPS * w.max()) ** (-1.0 / p)) @ v.T


def reference(params, grads, lrs, block_size, every):
  """Parameters after each step: the module docstring's equations, one block at a time."""
  p = {k: np.asarray(x, np.float64) for k, x in params.items()}
  mu = {k: np.zeros_like(x) for k, x in p.items()}
  nu = {k: np.zeros_like(x) for k, x in p.items()}
  stats, roots, out = {}, {}, []
  for t, (g_tree, lr) in enumerate(zip(grads, lrs), start=1):
    c1, c2 = 1 - B1**t, 1 - B2**t
    for k in p:
      g = np.asarray(g_tree[k], np.float64)
      nu[k] = B2 * nu[k] + (1 - B2) * g * g
      adam = g / (np.sqrt(nu[k] / c2) + EPS)
      if g.ndim < 2:
        mu[k] = B1 * mu[k] + (1 - B1) * g
        u = mu[k] / c1 / (np.sqrt(nu[k] / c2) + EPS)
      else:
        g2, a2 = g.reshape(-1, g.shape[-1]), adam.reshape(-1, g.shape[-1])
        m, n = g2.shape
        br, bc = min(block_size, m), min(block_size, n)
        d = np.zeros_like(g2)
        for i in range(0, m, br):
          for j in range(0, n, bc):
            blk, ab = g2[i:i + br, j:j + bc], a2[i:i + br, j:j + bc]
            l, r = stats.get((k, i, j), (0.0, 0.0))
            l = B2 * l + (1 - B2) * blk @ blk.T
            r = B2 * r + (1 - B2) * blk.T @ blk
            stats[k, i, j] = (l, r)
            if (t - 1) % every == 0:
              roots[k, i, j] = (inverse_root(l, 4), inverse_root(r, 4))
            dir_ = roots[k, i, j][0] @ blk @ roots[k, i, j][1]
            d[i:i + br, j:j + bc] = dir_ * np.linalg.norm(ab) / np.linalg.norm(dir_)
        mu[k] = B1 * mu[k] + (1 - B1) * d.reshape(g.shape)
        u = mu[k] / c1
      p[k] = p[k] - lr * (u + WD * p[k])
    out.append({k: x.copy() for k, x in p.items()})
  return out




def test_matches_numpy_reference_with_blocks_and_schedule():
  # block_size 3: w [6, 4] -> 2 x 2 blocks (3x3, and 3x1 zero-padded to 3x3); k -> [6, 2] -> 2 x 1.
  # In float64: the 3x1 blocks' L is rank-deficient for 2 steps, and in float32 eigh's noise
  # (~1e-7 lambda_max) is close to the damping (1e-6 lambda_max) there.
  schedule = optax.linear_schedule(0.1, 0.02, 4)
  tx = shampoo(schedule, B1, B2, EPS, MATRIX_EPS, block_size=3, precondition_every=2,
               weight_decay=WD)
  with jax.enable_x64(True):
    params, grads = tiny_problem(SHAPES, dtype=jnp.float64)
    got = run(tx, params, grads)
  want = reference(params, grads, [float(schedule(i)) for i in range(5)], 3, 2)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-5, err_msg=k)  # steps ~0.1


def test_stale_roots_between_recomputations():
  # precondition_every=3 vs 1 must differ at step 2 (stale roots), agree at step 1.
  params, grads = tiny_problem(SHAPES, steps=2)
  every3 = run(shampoo(0.1, block_size=3, precondition_every=3), params, grads)
  every1 = run(shampoo(0.1, block_size=3, precondition_every=1), params, grads)
  np.testing.assert_allclose(every3[0]["w"], every1[0]["w"], rtol=1e-6)
  assert np.max(np.abs(every3[1]["w"] - every1[1]["w"])) > 1e-4
