"""Long causal convolution as a block-Toeplitz matrix product in Pallas, forward and backward
under jax.custom_vjp (pallas_call has no reverse-mode rule).

With blocks of T time steps, y = k * u is block lower-triangular Toeplitz per channel:
  y_i = sum_{j <= i} T_{i-j} u_j,   T_d[r, s] = k[d T + r - s]  (0 where the index is < 0)
so every output block is a sum of small dense [T, T] x [T, batch] matmuls, which suit a matrix
unit, instead of FFTs, which TPUs run slowly. The nb = ceil(L / T) distinct blocks T_d are
gathered from k by XLA (`toeplitz_blocks`, float32); its autodiff (a scatter-add along the
diagonals) turns their gradient back into dk.

Kernels (layout [channels, time, batch] inside: channels are the matmul batch dimension, time
the contraction, the batch the lanes):
  * forward, grid (channel blocks, output block i, input block j): accumulates
    y_i += T_{i-j} u_j into a float32 output tile that stays resident across the innermost j
    axis (a sequential reduction axis); j > i is skipped and its block fetch clamped to j = i.
  * du: the adjoint of a causal convolution is the same convolution in reversed time, so du is
    the forward kernel applied to time-reversed dy.
  * dT, grid (channel blocks, lag d, j): dT_d = sum_j dy_{j+d} u_j^T (contracting the batch),
    accumulated over the innermost j axis.
Work is O(B L^2 C) like the direct convolution; memory holds the Toeplitz blocks, C * L * T
floats (and as many again for their gradient in the backward): T / batch times the size of the
activations.

Hardware layout assumptions (only interpret mode was run while writing this; compiled lowering is
untested):
  * TPU (Mosaic): tiles [block_c, T, T] (Toeplitz, float32) and [block_c, T, B] (u, y): T is a
    multiple of 8 (sublanes; 128 fills the MXU), the batch and T are full-extent lane dimensions
    (any size; batches >= 128 fill the lanes, small batches make the kernel bandwidth bound).
    The channel block (a leading dimension, any size) is sized to keep the per-step tiles under
    TILE_BUDGET_BYTES of VMEM; if even one channel does not fit, api.py falls back to "fft".
    The j (and d) grid axes are sequential reductions (TPU grids run in order).
  * GPU (Triton) is not supported: a Triton grid runs in parallel, so the output-resident
    accumulation over a grid axis would race; api.py runs "fft" there.
  * interpret mode: the TPU rules (block a multiple of 8).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._tiling import cdiv, round_up, target

DEFAULT_BLOCK = 128
SUBLANES = 8
TILE_BUDGET_BYTES = 8 * 2**20  # per-step tiles, of a TPU's default 16 MiB scoped VMEM


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one blocked call (hashable: a custom_vjp nondiff arg)."""
  block: int  # T, time steps per block
  block_c: int  # channels per tile
  blocks: int  # nb, time blocks
  interpret: bool


def default_block(length: int) -> int:
  """DEFAULT_BLOCK, shrunk for short sequences to the smallest multiple of 8 covering them."""
  return min(DEFAULT_BLOCK, round_up(length, SUBLANES))


def block_error(value: int) -> str | None:
  if value % SUBLANES:
    return f"block={value}: Pallas needs a multiple of {SUBLANES} (TPU sublanes)"
  return None


def _bytes_per_channel(block: int, batch: int, itemsize: int) -> int:
  """Per-step VMEM per channel of the heavier kernel (dT: a double-buffered f32 [T, T] output
  tile and two double-buffered [T, B] inputs; forward: [T, T] input, [T, B] in and f32 out)."""
  t2, tb = block * block * 4, block * batch
  return max(2 * t2 + 2 * tb * itemsize + 2 * tb * 4, 2 * t2 + 4 * tb * itemsize)


def default_block_c(channels: int, block: int, batch: int, itemsize: int) -> int:
  return max(1, min(channels, TILE_BUDGET_BYTES // _bytes_per_channel(block, batch, itemsize)))


def unsupported_reason(u_shape, dtype, *, block: int, block_c: int | None,
                       interpret: bool) -> str | None:
  """Why this call cannot run as Pallas kernels here (None if it can); argument validation is
  api.py's job."""
  t = target(interpret)
  if t == "interpret":
    return None
  if t == "gpu":
    return ("the block-Toeplitz kernels accumulate over a sequential grid axis, which Pallas on "
            "GPU (a parallel Triton grid) does not provide")
  if t != "tpu":
    return f"compiled Pallas kernels need a TPU; the default backend is {t}"
  batch, itemsize = u_shape[0], jnp.dtype(dtype).itemsize
  need = (block_c or 1) * _bytes_per_channel(block, batch, itemsize)
  if need > 1.5 * TILE_BUDGET_BYTES:
    return (f"the tiles of {block_c or 1} channel(s) need ~{need / 2**20:.1f} MiB of VMEM with "
            f"block {block} and batch {batch}; lower block, block_c or the batch")
  return None


def toeplitz_blocks(k, block: int, padded_length: int):
  """The nb = padded_length / block distinct Toeplitz blocks of k [L_k, C]:
  out[d, c, r, s] = k[d * block + r - s, c], 0 where that index is < 0 or >= L_k; float32
  [nb, C, block, block]. A gather, so autodiff sums the gradient along the diagonals."""
  L_k = k.shape[0]
  nb = padded_length // block
  kq = jnp.pad(k.astype(jnp.float32), ((block - 1, padded_length - L_k), (0, 0)))
  r = np.arange(block)
  idx = np.arange(nb)[:, None, None] * block + r[None, :, None] - r[None, None, :] + block - 1
  return kq[idx].transpose(0, 3, 1, 2)  # [nb, T, T, C] -> [nb, C, T, T]


def _precision(dtype):
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def _fwd_kernel(t_ref, u_ref, y_ref):
  """y_i += T_{i-j} u_j over the innermost grid axis j <= i."""
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    y_ref[...] = jnp.zeros(y_ref.shape, y_ref.dtype)

  @pl.when(j <= i)
  def _accumulate():
    u = u_ref[...]  # [bc, T, B]
    y_ref[...] += lax.dot_general(t_ref[...].astype(u.dtype), u, (((2,), (1,)), ((0,), (0,))),
                                  preferred_element_type=jnp.float32,
                                  precision=_precision(u.dtype))


def _dt_kernel(dy_ref, u_ref, dt_ref, *, blocks: int):
  """dT_d += dy_{j+d} u_j^T over the innermost grid axis j < blocks - d."""
  d, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    dt_ref[...] = jnp.zeros(dt_ref.shape, dt_ref.dtype)

  @pl.when(j + d < blocks)
  def _accumulate():
    u = u_ref[...]
    dt_ref[...] += lax.dot_general(dy_ref[...], u, (((2,), (2,)), ((0,), (0,))),
                                   preferred_element_type=jnp.float32,
                                   precision=_precision(u.dtype))


def _time_tile(c: Config, batch: int, block_index):
  """BlockSpec of a [block_c, T, batch] tile of a [C, L, batch] array."""
  return pl.BlockSpec((c.block_c, c.block, batch),
                      lambda ci, a, b: (ci, block_index(a, b), 0))


def _toeplitz_matmul(c: Config, tb, ut):
  """y = block-Toeplitz(tb) @ ut: tb [nb, Cp, T, T] float32, ut [Cp, Lp, B] -> float32."""
  batch = ut.shape[2]
  nc = ut.shape[0] // c.block_c
  return pl.pallas_call(
      _fwd_kernel,
      out_shape=jax.ShapeDtypeStruct(ut.shape, jnp.float32),
      grid=(nc, c.blocks, c.blocks),
      in_specs=[pl.BlockSpec((pl.squeezed, c.block_c, c.block, c.block),
                             lambda ci, i, j: (i - jnp.minimum(j, i), ci, 0, 0)),
                _time_tile(c, batch, lambda i, j: jnp.minimum(j, i))],
      out_specs=_time_tile(c, batch, lambda i, j: i),
      interpret=c.interpret, name="long_conv_toeplitz",
  )(tb, ut)


def _toeplitz_grad(c: Config, dy, ut):
  """dT_d = sum_j dy_{j+d} u_j^T (batch contracted): float32 [nb, Cp, T, T]."""
  batch = ut.shape[2]
  nc = ut.shape[0] // c.block_c
  last = c.blocks - 1
  return pl.pallas_call(
      functools.partial(_dt_kernel, blocks=c.blocks),
      out_shape=jax.ShapeDtypeStruct((c.blocks, ut.shape[0], c.block, c.block), jnp.float32),
      grid=(nc, c.blocks, c.blocks),
      in_specs=[_time_tile(c, batch, lambda d, j: jnp.minimum(j + d, last)),
                _time_tile(c, batch, lambda d, j: jnp.minimum(j, last - d))],
      out_specs=pl.BlockSpec((pl.squeezed, c.block_c, c.block, c.block),
                             lambda ci, d, j: (d, ci, 0, 0)),
      interpret=c.interpret, name="long_conv_toeplitz_grad",
  )(dy, ut)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _block_toeplitz(c: Config, tb, ut):
  return _toeplitz_matmul(c, tb, ut)


def _block_toeplitz_fwd(c: Config, tb, ut):
  return _toeplitz_matmul(c, tb, ut), (tb, ut)


def _block_toeplitz_bwd(c: Config, res, dy):
  tb, ut = res
  dy = dy.astype(ut.dtype)  # float32 cotangent of a float32 output cast from u's dtype
  du = jnp.flip(_toeplitz_matmul(c, tb, jnp.flip(dy, 1)), 1).astype(ut.dtype)
  return _toeplitz_grad(c, dy, ut), du


_block_toeplitz.defvjp(_block_toeplitz_fwd, _block_toeplitz_bwd)


def long_conv(u, k, *, block: int | None = None, block_c: int | None = None,
              interpret: bool = False) -> jax.Array:
  """Causal long convolution (conventions of reference.long_conv) as block-Toeplitz Pallas
  kernels. block: time steps per block (default 128, shrunk for short sequences; a multiple of
  8); block_c: channels per tile (default: as many as fit TILE_BUDGET_BYTES)."""
  B, L, C = u.shape
  T = block or default_block(L)
  nb = cdiv(L, T)
  bc = block_c or default_block_c(C, T, B, u.dtype.itemsize)
  cp = round_up(C, bc)
  tb = toeplitz_blocks(jnp.pad(k, ((0, 0), (0, cp - C))), T, nb * T)
  ut = jnp.pad(u, ((0, 0), (0, nb * T - L), (0, cp - C))).transpose(2, 1, 0)
  y = _block_toeplitz(Config(block=T, block_c=bc, blocks=nb, interpret=interpret), tb, ut)
  return y.transpose(2, 1, 0)[:, :L, :C].astype(u.dtype)
