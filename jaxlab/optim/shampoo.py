"""Blocked Shampoo with Adam grafting (Gupta et al. 2018, "Shampoo: Preconditioned Stochastic
Tensor Optimization"; as used in practice: Anil et al. 2020, "Scalable Second Order Optimization
for Deep Learning", the "distributed Shampoo" of the AlgoPerf benchmark).

For a matrix leaf (>2-D leaves viewed as [prod(shape[:-1]), shape[-1]]), per block G of at most
block_size x block_size (jaxlab.optim.blocking), at step t = 1, 2, ...:

  L_t = b2 L_{t-1} + (1 - b2) G G^T,   R_t = b2 R_{t-1} + (1 - b2) G^T G   (EMA, not the sum)
  every k = precondition_every steps (t = 1, 1 + k, 1 + 2k, ...; from the updated L_t, R_t):
    P_L = L^{-1/4}, P_R = R^{-1/4} by eigh; eigenvalues clipped at 0, plus matrix_eps * lambda_max
    (identity where L = 0)
  D = P_L G P_R                                            the Shampoo direction
  v_t = b2 v_{t-1} + (1 - b2) g^2,  A = g / (sqrt(v_t / (1 - b2^t)) + eps)   Adam's (RMSProp) step
  D <- D * ||A_block||_F / ||D_block||_F                   layer-wise (here block-wise) grafting
  m_t = b1 m_{t-1} + (1 - b1) D,    update = m_t / (1 - b1^t)

Vectors and scalars get plain Adam (optax.scale_by_adam). shampoo() adds decoupled weight decay
and scales by -learning_rate (as optax.adamw). The EMA's scale cancels in the direction (the
damping is relative) and in the grafting, so EMA vs sum only changes how old gradients weigh.
Precision: float32 eigh's eigenvalue error (~1e-7 lambda_max) is close to the default damping
(1e-6 lambda_max), so where a block's L or R is rank-deficient (early steps, or blocks with
fewer columns than rows) the float32 roots in its null space are off by up to a few percent.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim.blocking import (from_blocks, init_factors, matmul, matrix_shape, state_dtype,
                                    step_terms, t, to_blocks)


class ShampooLeaf(NamedTuple):
  """Per-leaf state. mu, nu: param-shaped, at least f32 (Adam's moments for vectors; for matrices
  mu is the momentum of the grafted direction and nu the graft's second moment). l, r: the block
  statistics [nr, nc, br, br], [nr, nc, bc, bc]; l_root, r_root: their inverse 4th roots, same
  shapes (all four None for vectors and scalars)."""
  mu: jax.Array
  nu: jax.Array
  l: Any = None
  r: Any = None
  l_root: Any = None
  r_root: Any = None


class ShampooState(NamedTuple):
  count: jax.Array  # steps taken; the next step first recomputes the roots if count % k == 0
  leaves: Any  # the params' tree with a ShampooLeaf per leaf


def inverse_root(s: jax.Array, p: int, matrix_eps: float) -> jax.Array:
  """s^{-1/p} of (batches of) symmetric PSD s: eigh, eigenvalues clipped at 0, damped by
  matrix_eps * largest eigenvalue; the identity where s = 0."""
  w, v = jnp.linalg.eigh(s)
  w = jnp.maximum(w, 0.0)
  w_max = jnp.max(w, axis=-1, keepdims=True)
  d = jnp.where(w_max > 0, w + matrix_eps * w_max, 1.0) ** (-1.0 / p)
  return matmul(v * d[..., None, :], t(v))


def _blocks_norm(x):
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))


def scale_by_shampoo(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     matrix_eps: float = 1e-6, block_size: int = 128,
                     precondition_every: int = 10) -> optax.GradientTransformation:
  """Blocked Shampoo directions with Adam grafting and momentum (module docstring); no -lr."""

  def init_leaf(p):
    zeros = jnp.zeros(p.shape, state_dtype(p))
    factors = init_factors(p.shape, zeros.dtype, block_size)
    return ShampooLeaf(zeros, zeros) if factors is None else ShampooLeaf(zeros, zeros, *factors)

  def init(params):
    return ShampooState(jnp.zeros([], jnp.int32), jax.tree.map(init_leaf, params))

  def update(updates, state, params=None):
    del params
    count, recompute, c1, c2 = step_terms(state.count, b1, b2, precondition_every)

    def leaf_update(g, s):
      g = g.astype(s.mu.dtype)
      nu = b2 * s.nu + (1 - b2) * jnp.square(g)
      adam = g / (jnp.sqrt(nu / c2) + eps)
      if s.l is None:
        mu = b1 * s.mu + (1 - b1) * g
        return mu / c1 / (jnp.sqrt(nu / c2) + eps), s._replace(mu=mu, nu=nu)
      m, n = matrix_shape(g.shape)
      blocks = to_blocks(g.reshape(m, n), block_size)
      l = b2 * s.l + (1 - b2) * matmul(blocks, t(blocks))
      r = b2 * s.r + (1 - b2) * matmul(t(blocks), blocks)
      l_root, r_root = jax.lax.cond(
          recompute, lambda: (inverse_root(l, 4, matrix_eps), inverse_root(r, 4, matrix_eps)),
          lambda: (s.l_root, s.r_root))
      direction = matmul(matmul(l_root, blocks), r_root)
      d_norm = _blocks_norm(direction)
      a_norm = _blocks_norm(to_blocks(adam.reshape(m, n), block_size))
      direction = direction * jnp.where(d_norm > 0, a_norm / jnp.where(d_norm > 0, d_norm, 1), 0)
      mu = b1 * s.mu + (1 - b1) * from_blocks(direction, m, n).reshape(g.shape)
      return mu / c1, ShampooLeaf(mu, nu, l, r, l_root, r_root)

    out = jax.tree.map(leaf_update, updates, state.leaves)
    new_updates = jax.tree.map(lambda g, o: o[0].astype(g.dtype), updates, out)
    leaves = jax.tree.map(lambda _, o: o[1], updates, out)
    return new_updates, ShampooState(count, leaves)

  return optax.GradientTransformation(init, update)


def shampoo(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, matrix_eps: float = 1e-6, block_size: int = 128,
            precondition_every: int = 10,
            weight_decay: float = 0.0) -> optax.GradientTransformation:
  """scale_by_shampoo, decoupled weight decay (+ weight_decay * p, as optax.adamw), then
  -learning_rate (a float or an optax schedule)."""
  return optax.chain(
      scale_by_shampoo(b1, b2, eps, matrix_eps, block_size, precondition_every),
      optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate))
