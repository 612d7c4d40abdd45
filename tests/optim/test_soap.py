"""SOAP against a plain-numpy loop over blocks (float64) of Vyas et al. (2024)'s Algorithm 3."""

import numpy as np
import optax

from jaxlab.optim.soap import soap
from tests.optim.blocked_problem import run, tiny_problem

SHAPES = {"w": (6, 4), "p": (5, 3), "b": (4,)}
B1, B2, EPS, WD = 0.95, 0.95, 1e-8, 0.1


def reference(params, grads, lr, block_size, every):
  """Parameters after each step: the module docstring's equations, one block at a time."""
  p = {k: np.asarray(x, np.float64) for k, x in params.items()}
  mu = {k: np.zeros_like(x) for k, x in p.items()}
  nu = {k: np.zeros_like(x) for k, x in p.items()}
  blocks, out = {}, []  # (leaf, i, j) -> [L, R, Q_L, Q_R, V]
  for t, g_tree in enumerate(grads, start=1):
    c1, c2 = 1 - B1**t, 1 - B2**t
    for k in p:
      g = np.asarray(g_tree[k], np.float64)
      mu[k] = B1 * mu[k] + (1 - B1) * g
      if g.ndim < 2:
        nu[k] = B2 * nu[k] + (1 - B2) * g * g
        u = mu[k] / c1 / (np.sqrt(nu[k] / c2) + EPS)
      else:
        m, n = g.shape
        br, bc = min(block_size, m), min(block_size, n)
        u = np.zeros_like(g)
        for i in range(0, m, br):
          for j in range(0, n, bc):
            blk, mblk = g[i:i + br, j:j + bc], mu[k][i:i + br, j:j + bc]
            r_, c_ = blk.shape
            s = blocks.setdefault((k, i, j), [0.0, 0.0, np.eye(r_), np.eye(c_), np.zeros_like(blk)])
            ql, qr = s[2], s[3]
            s[4] = B2 * s[4] + (1 - B2) * (ql.T @ blk @ qr) ** 2
            n_rot = (ql.T @ mblk @ qr) / c1 / (np.sqrt(s[4] / c2) + EPS)
            u[i:i + br, j:j + bc] = ql @ n_rot @ qr.T
            s[0] = B2 * s[0] + (1 - B2) * blk @ blk.T
            s[1] = B2 * s[1] + (1 - B2) * blk.T @ blk
            if (t - 1) % every == 0:
              s[2], s[3] = np.linalg.eigh(s[0])[1][:, ::-1], np.linalg.eigh(s[1])[1][:, ::-1]
      p[k] = p[k] - lr * (u + WD * p[k])
    out.append({k: x.copy() for k, x in p.items()})
  return out




def test_matches_numpy_reference_with_blocks():
  # block_size 2: w [6, 4] -> 3 x 2 blocks of 2x2; p [5, 3] -> 3 x 2 blocks, the edge ones
  # zero-padded (2x1, 1x2, 1x1 real). The eigenvectors' signs (numpy vs jax) cancel in
  # Q (M' / sqrt(V)) Q^T; their order (decreasing eigenvalue) must match.
  params, grads = tiny_problem(SHAPES)
  tx = soap(0.1, B1, B2, EPS, block_size=2, precondition_every=2, weight_decay=WD)
  got = run(tx, params, grads)
  want = reference(params, grads, 0.1, 2, 2)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_basis_changes_only_every_precondition_every_steps():
  # Step 1 is Adam (identity basis); step 2 uses L_1's basis for any k (bases are recomputed
  # after steps 1, 1 + k, ...); step 3 uses L_2's basis for k = 1 but still L_1's for k = 3.
  params, grads = tiny_problem(SHAPES, steps=3)
  every1 = run(soap(0.1, block_size=2, precondition_every=1), params, grads)
  every3 = run(soap(0.1, block_size=2, precondition_every=3), params, grads)
  adam = run(optax.adam(0.1, 0.95, 0.95), params, grads)
  np.testing.assert_allclose(every1[0]["w"], adam[0]["w"], rtol=1e-6)
  np.testing.assert_allclose(every3[1]["w"], every1[1]["w"], rtol=1e-6)
  assert not np.allclose(every3[1]["w"], adam[1]["w"], atol=1e-3)
  assert np.max(np.abs(every3[2]["w"] - every1[2]["w"])) > 1e-3
