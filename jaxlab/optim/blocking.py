"""Matrix view of a parameter and its grid of blocks, for block-diagonal preconditioners
(Shampoo as in Anil et al. 2020, "Scalable Second Order Optimization for Deep Learning", Sec. 4;
SOAP, Vyas et al. 2024).

A leaf of shape [d0, ..., dk] (k >= 1) is viewed as the matrix [d0 * ... * d(k-1), dk]; the matrix
[m, n] is split into blocks of at most block_size x block_size: br = min(block_size, m) rows and
bc = min(block_size, n) columns, the last blocks zero-padded. Zero padding is exact for both
optimizers: padded rows / columns of a block add zero rows / columns to its statistics.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

matmul = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def matrix_shape(shape) -> tuple[int, int] | None:
  """[prod(shape[:-1]), shape[-1]] for >= 2-D shapes, None for vectors and scalars."""
  return (math.prod(shape[:-1]), shape[-1]) if len(shape) >= 2 else None


def grid(m: int, n: int, block_size: int) -> tuple[int, int, int, int]:
  """(rows of blocks, columns of blocks, block rows, block columns) of an [m, n] matrix."""
  br, bc = min(block_size, m), min(block_size, n)
  return -(-m // br), -(-n // bc), br, bc


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
  """[m, n] -> [nr, nc, br, bc], zero-padded at the bottom / right edges."""
  m, n = x.shape
  nr, nc, br, bc = grid(m, n, block_size)
  x = jnp.pad(x, ((0, nr * br - m), (0, nc * bc - n)))
  return x.reshape(nr, br, nc, bc).transpose(0, 2, 1, 3)


def from_blocks(b: jax.Array, m: int, n: int) -> jax.Array:
  """[nr, nc, br, bc] -> [m, n], the inverse of to_blocks (padding dropped)."""
  nr, nc, br, bc = b.shape
  return b.transpose(0, 2, 1, 3).reshape(nr * br, nc * bc)[:m, :n]


def t(x: jax.Array) -> jax.Array:
  """Transpose of the last two axes."""
  return jnp.swapaxes(x, -1, -2)


class Factors(NamedTuple):
  """A matrix leaf's block statistics and their per-block bases: L [nr, nc, br, br] and R
  [nr, nc, bc, bc] (zeros at init), q_l and q_r (identities at init; Shampoo keeps inverse
  roots there, SOAP eigenbases)."""
  l: jax.Array
  r: jax.Array
  q_l: jax.Array
  q_r: jax.Array


def init_factors(shape, dtype, block_size: int) -> Factors | None:
  """Initial Factors of a leaf of `shape`; None for vectors and scalars (no preconditioner)."""
  if matrix_shape(shape) is None:
    return None
  nr, nc, br, bc = grid(*matrix_shape(shape), block_size)
  eye = lambda k: jnp.broadcast_to(jnp.eye(k, dtype=dtype), (nr, nc, k, k))
  return Factors(jnp.zeros((nr, nc, br, br), dtype), jnp.zeros((nr, nc, bc, bc), dtype), eye(br),
                 eye(bc))


def state_dtype(p: jax.Array):
  """Optimizer statistics are kept in at least float32."""
  return jnp.promote_types(p.dtype, jnp.float32)


def step_terms(count: jax.Array, b1, b2, precondition_every: int):
  """(the incremented count, whether this step recomputes the bases (count before it a multiple
  of precondition_every), 1 - b1^t, 1 - b2^t) for the step after `count`."""
  t_new = optax.safe_int32_increment(count)
  steps = t_new.astype(jnp.float32)
  return t_new, count % precondition_every == 0, 1 - b1 ** steps, 1 - b2 ** steps
