"""Tiling helpers shared by the Pallas kernels (pallas.py of each op)."""

import jax


def cdiv(a: int, b: int) -> int:
  """ceil(a / b) for ints."""
  return -(-a // b)


def round_up(n: int, m: int) -> int:
  """The smallest multiple of m that is >= n."""
  return cdiv(n, m) * m


def next_pow2(n: int) -> int:
  """The smallest power of 2 that is >= n (1 for n <= 1)."""
  return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def target(interpret: bool) -> str:
  """'interpret', 'tpu', 'gpu' or another backend name: which layout rules apply."""
  if interpret:
    return "interpret"
  backend = jax.default_backend()
  return "gpu" if backend in ("cuda", "rocm") else backend
