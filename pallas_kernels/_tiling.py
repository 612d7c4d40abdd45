"""Tiling helpers and per-target compiler parameters shared by the Pallas kernels."""

from typing import Sequence

from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

LANES = 128  # TPU vector lanes: the last dim of a TPU block is a multiple of this or the full dim
SUBLANES = 8  # TPU sublanes (f32): the second-to-last dim of a block is a multiple of this


def cdiv(a: int, b: int) -> int:
  """ceil(a / b) for ints."""
  return -(-a // b)


def round_up(n: int, m: int) -> int:
  """The smallest multiple of m that is >= n."""
  return cdiv(n, m) * m


def next_pow2(n: int) -> int:
  """The smallest power of 2 that is >= n (1 for n <= 1)."""
  return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def compiler_params(target: str, dimension_semantics: Sequence[str], *,
                    num_warps: int | None = None, num_stages: int | None = None):
  """The pallas_call compiler parameters that pin the compiler a kernel is written for.

  "tpu": Mosaic, with `dimension_semantics` per grid axis ("parallel": independent iterations
  that a megacore chip splits over its cores; "arbitrary": sequential, e.g. a reduction with a
  scratch accumulator). "gpu": Triton (jax >= 0.10 lowers pallas_call to Mosaic GPU unless it
  is given Triton's parameters; these kernels follow Triton's rules: power-of-two blocks,
  whole-array refs in global memory indexed with pl.ds). The semantics are ignored there:
  Triton runs every grid point as an independent program.
  """
  if target == "tpu":
    return pltpu.CompilerParams(dimension_semantics=tuple(dimension_semantics))
  if target == "gpu":
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")

