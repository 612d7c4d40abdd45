"""Shared comparison helpers of the kernel tests: every kernel against its reference, values and
gradients, within |x - ref| <= tol * |ref| + tol * max|ref| elementwise (relative to each entry
and to the tensor's scale); tol = 1e-5 for float32 and 2e-2 for bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def assert_close(actual, expected, tol: float, what: str, *, nontrivial: bool = True) -> None:
  """Finite and within tol of `expected`; nontrivial: the reference is not all zeros."""
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  scale = float(np.max(np.abs(expected)))
  assert scale > 0 or not nontrivial, f"{what}: trivial reference"
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def value_and_grads(fn, *args):
  """(fn(*primals), *vjp(cotangent)) in one jitted program; args = (*primals, cotangent)."""
  @jax.jit
  def run(*args):
    out, vjp = jax.vjp(fn, *args[:-1])
    return (out, *vjp(args[-1]))
  return run(*args)
