"""W^T a for feature-major activations (FeedForward's hidden layer, a [fan_in, tokens]), with
every product of the forward and backward pass in the one form XLA:CPU's fast GEMM takes.

XLA:CPU (jaxlib 0.10) gives a dot to YNNPACK only when its left operand is row-major [M, K]
(contracting its minor axis); a dot whose left operand contracts its major axis (A^T B) runs in
Eigen instead, which at the LM's shapes reached 67 GFLOP/s per core against YNNPACK's 100
(docs/results/cpu_speed.md). A transpose written in JAX does not help: XLA folds it into the
dot's dimension numbers, so W^T a and autodiff's products come out as A^T B. Here each product
is written with a row-major left operand and `jax.lax.optimization_barrier` keeps XLA from
folding the transposes back:

  forward        y = (W^T) a          W^T materialised (a weight-sized copy)
  input grad     da = W g             (g = dL/dy, [fan_out, tokens])
  weight grad    dW = a g^T           when fan_in >= fan_out (a is the wide, stored side)
                 dW = (g a^T)^T       otherwise (g is)

FeedForward stores its wide hidden activations feature-major, while its d-wide side (the input
x^T, the cotangent of the output) is a transposed view of a token-major array; taking the wide
operand as the left one keeps both weight gradients row-major. Same products as autodiff of
W^T a, summed by another GEMM kernel: results agree to float32 rounding, not bit for bit. On
other platforms (GPU, TPU) `matmul` is the plain dot_general.
"""

import jax
import jax.numpy as jnp

_barrier = jax.lax.optimization_barrier


def _plain(w: jax.Array, a: jax.Array) -> jax.Array:
  return jax.lax.dot_general(w, a, (((0,), (0,)), ((), ())))


@jax.custom_vjp
def _row_major(w: jax.Array, a: jax.Array) -> jax.Array:
  """w [K, F], a [K, N] -> w^T a [F, N], every product with a row-major left operand."""
  return _barrier(jnp.dot(_barrier(w.T), a))


def _row_major_fwd(w, a):
  return _row_major(w, a), (w, a)


def _row_major_bwd(res, g):
  w, a = res
  da = _barrier(jnp.dot(w, g))
  if w.shape[0] >= w.shape[1]:
    dw = _barrier(jnp.dot(a, g.T))
  else:
    dw = _barrier(jnp.dot(g, a.T)).T
  return dw, da


_row_major.defvjp(_row_major_fwd, _row_major_bwd)


def _cpu(w: jax.Array, a: jax.Array) -> jax.Array:
  K = w.shape[0]
  y = _row_major(w, a.reshape(K, -1))
  return y.reshape((w.shape[1],) + a.shape[1:])


def matmul(w: jax.Array, a: jax.Array) -> jax.Array:
  """w^T a: w [K, F], a [K, ...] -> [F, ...] (module docstring: on CPU every product of it and
  of its gradient has a row-major left operand)."""
  return jax.lax.platform_dependent(w, a, cpu=_cpu, default=_plain)
