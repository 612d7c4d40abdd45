"""SOAP: Adam in Shampoo's eigenbasis (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo
using Adam", Algorithm 3, blocked as jaxlab.optim.blocking).

For a matrix leaf (>2-D leaves viewed as [prod(shape[:-1]), shape[-1]]), per block G, at step
t = 1, 2, ..., in the paper's order (the basis used at step t predates G_t; Q_L = Q_R = I at t = 1,
so step 1 is an Adam step):

  G' = Q_L^T G Q_R,  M_t = b1 M_{t-1} + (1 - b1) G,  M' = Q_L^T M_t Q_R
                                              (M kept in the original basis, rotated when used)
  V_t = b2 V_{t-1} + (1 - b2) G'^2            second moment, in the rotated basis
  update = Q_L [ (M' / (1 - b1^t)) / (sqrt(V_t / (1 - b2^t)) + eps) ] Q_R^T
  then L_t = b2 L_{t-1} + (1 - b2) G G^T,  R_t = b2 R_{t-1} + (1 - b2) G^T G, and
  every precondition_every steps (after steps t = 1, 1 + k, 1 + 2k, ...):
    Q_L, Q_R = eigenvectors of L_t, R_t by jnp.linalg.eigh (not the paper's one QR
    power-iteration step), by decreasing eigenvalue; V is kept as is when the basis changes
    (entry (i, j) stays with the i-th / j-th eigenvectors), as in the paper.

Not using G_t's own basis at step t matters in float32: there G' = diag(singular values) exactly,
and Adam would turn its ~1e-7 float32 off-diagonal noise into O(1) steps. (The reference code
instead spends step 1 on computing the basis, without an update.) Vectors and scalars get plain
Adam. soap() adds decoupled weight decay and scales by -learning_rate (as optax.adamw).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim.blocking import (from_blocks, init_factors, matmul, matrix_shape, state_dtype,
                                    step_terms, t, to_blocks)


class SoapLeaf(NamedTuple):
  """Per-leaf state. mu: param-shaped first moment, at least f32 (original basis). nu: 2nd moment,
  param-shaped for vectors, [nr, nc, br, bc] in the rotated basis for matrices. l, r: block
  statistics [nr, nc, br, br], [nr, nc, bc, bc]; q_l, q_r: their eigenvectors (None for vectors)."""
  mu: jax.Array
  nu: jax.Array
  l: Any = None
  r: Any = None
  q_l: Any = None
  q_r: Any = None


class SoapState(NamedTuple):
  count: jax.Array  # steps taken; the next step ends recomputing the bases if count % k == 0
  leaves: Any  # the params' tree with a SoapLeaf per leaf


def _eigenbasis(s: jax.Array) -> jax.Array:
  """Eigenvectors of (batches of) symmetric s as columns, by decreasing eigenvalue (as the
  reference code): a block's zero-padded coordinates (eigenvalue 0) keep the last positions, the
  ones they hold in the initial identity basis, so padding does not reorder V."""
  return jnp.linalg.eigh(s)[1][..., ::-1]


def scale_by_soap(b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8, block_size: int = 128,
                  precondition_every: int = 10) -> optax.GradientTransformation:
  """Blocked SOAP directions (module docstring), before weight decay and -learning_rate."""

  def init_leaf(p):
    zeros = jnp.zeros(p.shape, state_dtype(p))
    factors = init_factors(p.shape, zeros.dtype, block_size)
    if factors is None:
      return SoapLeaf(zeros, zeros)
    nu = jnp.zeros(factors.l.shape[:3] + factors.r.shape[-1:], zeros.dtype)  # [nr, nc, br, bc]
    return SoapLeaf(zeros, nu, *factors)

  def init(params):
    return SoapState(jnp.zeros([], jnp.int32), jax.tree.map(init_leaf, params))

  def update(updates, state, params=None):
    del params
    count, recompute, c1, c2 = step_terms(state.count, b1, b2, precondition_every)

    def leaf_update(g, s):
      g = g.astype(s.mu.dtype)
      mu = b1 * s.mu + (1 - b1) * g
      if s.l is None:
        nu = b2 * s.nu + (1 - b2) * jnp.square(g)
        return mu / c1 / (jnp.sqrt(nu / c2) + eps), s._replace(mu=mu, nu=nu)
      m, n = matrix_shape(g.shape)
      blocks = to_blocks(g.reshape(m, n), block_size)
      rotate = lambda x: matmul(matmul(t(s.q_l), x), s.q_r)
      nu = b2 * s.nu + (1 - b2) * jnp.square(rotate(blocks))
      m_rot = rotate(to_blocks(mu.reshape(m, n), block_size))
      direction = matmul(matmul(s.q_l, m_rot / c1 / (jnp.sqrt(nu / c2) + eps)), t(s.q_r))
      l = b2 * s.l + (1 - b2) * matmul(blocks, t(blocks))
      r = b2 * s.r + (1 - b2) * matmul(t(blocks), blocks)
      q_l, q_r = jax.lax.cond(recompute, lambda: (_eigenbasis(l), _eigenbasis(r)),
                              lambda: (s.q_l, s.q_r))
      return (from_blocks(direction, m, n).reshape(g.shape),
              SoapLeaf(mu, nu, l, r, q_l, q_r))

    out = jax.tree.map(leaf_update, updates, state.leaves)
    new_updates = jax.tree.map(lambda g, o: o[0].astype(g.dtype), updates, out)
    return new_updates, SoapState(count, jax.tree.map(lambda _, o: o[1], updates, out))

  return optax.GradientTransformation(init, update)


def soap(learning_rate: optax.ScalarOrSchedule, b1: float = 0.95, b2: float = 0.95,
         eps: float = 1e-8, block_size: int = 128, precondition_every: int = 10,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """scale_by_soap, decoupled weight decay (+ weight_decay * p, as optax.adamw), -learning_rate."""
  return optax.chain(scale_by_soap(b1, b2, eps, block_size, precondition_every),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))
