"""Depthwise convolution kernels for TPU, compiled by Mosaic: forward (also dx, with the
adjoint's config) and dw. Called through pallas.depthwise_conv1d / 2d(target="tpu").

Channels are the 128 lanes (block_c a multiple of 128 or all of C); grid (batch, channel
blocks, row tiles), every axis "parallel". Tile i holds `block` output rows and reads the input
window of rows [i * block, i * block + block + halo), halo = k - 1: a BlockSpec of pl.Element
dimensions (element offsets, so consecutive windows overlap; the pipeline still double-buffers
them, no manual DMA). Every tap is a shifted ref slice of the window (pl.ds; Mosaic cannot slice
a value at a loop-dependent offset); bf16 windows are first copied to an f32 VMEM scratch, so
shifted reads are of 32-bit rows. Per-tap weights and dw partials are [1, block_c] rows indexed
on leading dimensions.
  1-D: rows are time steps on sublanes (block and halo multiples of 8, 16 for bf16); the K taps
    are unrolled over strips of <= 64 rows, so each strip's sum stays in vregs.
  2-D: window [block + kh - 1, padded width, block_c] (rows leading, width on sublanes); a loop
    over output rows and kernel rows, the kw taps of a kernel row unrolled, keeps one output row
    [width, block_c] in vregs. Per-step VMEM is O((block + kh) * width * block_c), independent
    of the image height (vmem_bytes; pallas.py sizes the default block to its budget).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import LANES, SUBLANES, cdiv, compiler_params, round_up
from pallas_kernels.depthwise_conv.pallas_common import Config, out_shape

STRIP_ROWS = 64  # TPU 1-D: rows summed in vregs at a time


def sublanes(dtype) -> int:
  """TPU rows per (sublane x lane) tile of `dtype`: 8 for float32, 16 for bfloat16."""
  return SUBLANES * 4 // jnp.dtype(dtype).itemsize


def halo_rows(k: int, dtype, ndim: int) -> int:
  """TPU: input rows a tile reads past its `block` rows: k - 1, rounded up to whole sublane
  tiles in 1-D (time is the sublane dimension of the window there)."""
  return round_up(k - 1, sublanes(dtype)) if ndim == 1 else k - 1


def vmem_bytes(x_shape, ksize, dtype, block: int, block_c: int) -> int:
  """Rough TPU per-step VMEM of the widest call (dx, whose input is padded by k - 1 per side):
  double-buffered input window, output tile and f32 taps (weights, dw partials), plus the f32
  copy of a bf16 window."""
  itemsize = jnp.dtype(dtype).itemsize
  width = 1 if len(ksize) == 1 else x_shape[2] + 2 * (ksize[1] - 1)
  window = (block + halo_rows(ksize[0], dtype, len(ksize))) * width * block_c
  out = block * width * block_c
  taps = math.prod(ksize) * block_c
  return 2 * (window * itemsize + out * 4 + taps * 4) + (window * 4 if itemsize < 4 else 0)


def _window(x_ref, win_ref):
  """The tile's input window in float32: x_ref itself, or (bf16) its copy in win_ref."""
  if win_ref is None:
    return x_ref
  win_ref[...] = x_ref[...].astype(jnp.float32)
  return win_ref


def _strips(rows: int):
  """Static (start, size) strips of <= STRIP_ROWS rows."""
  return [(s, min(STRIP_ROWS, rows - s)) for s in range(0, rows, STRIP_ROWS)]


def _fwd1d_kernel(x_ref, v_ref, y_ref, win_ref=None):
  win = _window(x_ref, win_ref)
  for start, size in _strips(y_ref.shape[0]):
    acc = v_ref[0] * win[pl.ds(start, size), :]
    for k in range(1, v_ref.shape[0]):
      acc = acc + v_ref[k] * win[pl.ds(start + k, size), :]
    y_ref[pl.ds(start, size), :] = acc.astype(y_ref.dtype)


def _dw1d_kernel(x_ref, dy_ref, dv_ref, win_ref=None):
  win = _window(x_ref, win_ref)
  rows = dy_ref.shape[0]
  dy = dy_ref[...].astype(jnp.float32)
  for k in range(dv_ref.shape[0]):
    dv_ref[k] = jnp.sum(dy * win[pl.ds(k, rows), :], axis=0, keepdims=True)


def _fwd2d_kernel(x_ref, v_ref, y_ref, win_ref=None):
  win = _window(x_ref, win_ref)
  _, wo, bc = y_ref.shape
  kh, kw = v_ref.shape[:2]

  def out_row(r, carry):
    def kernel_row(i, acc):
      for j in range(kw):
        acc = acc + v_ref[i, j] * win[r + i, pl.ds(j, wo), :]
      return acc

    acc = lax.fori_loop(0, kh, kernel_row, jnp.zeros((wo, bc), jnp.float32))
    y_ref[r] = acc.astype(y_ref.dtype)
    return carry

  lax.fori_loop(0, y_ref.shape[0], out_row, 0)


def _dw2d_kernel(x_ref, dy_ref, dv_ref, win_ref=None):
  win = _window(x_ref, win_ref)
  bh, wo, bc = dy_ref.shape
  kh, kw = dv_ref.shape[:2]

  def kernel_row(i, carry):
    for j in range(kw):
      def out_row(r, acc, j=j):
        return acc + dy_ref[r].astype(jnp.float32) * win[r + i, pl.ds(j, wo), :]

      acc = lax.fori_loop(0, bh, out_row, jnp.zeros((wo, bc), jnp.float32))
      dv_ref[i, j] = jnp.sum(acc, axis=0, keepdims=True)
    return carry

  lax.fori_loop(0, kh, kernel_row, 0)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  out: tuple  # output spatial shape
  tiles: int  # row tiles
  blocks_c: int
  block_c: int
  window: int  # input rows read per tile: block + halo


def _geometry(c: Config, x, ksize) -> _Geometry:
  out = out_shape(x.shape, ksize, c.pads)
  block_c = min(c.block_c, round_up(x.shape[-1], LANES))
  return _Geometry(out=out, tiles=cdiv(out[0], c.block), blocks_c=cdiv(x.shape[-1], block_c),
                   block_c=block_c, window=c.block + halo_rows(ksize[0], x.dtype, len(out)))


def _padded_input(c: Config, g: _Geometry, x):
  """x zero-padded by c.pads, with extra zero rows so that the last tile's window is in
  bounds, and channels padded to whole channel blocks."""
  rows, top = x.shape[1], c.pads[0][0]
  pads = ([(0, 0), (top, (g.tiles - 1) * c.block + g.window - rows - top)] + list(c.pads[1:])
          + [(0, g.blocks_c * g.block_c - x.shape[-1])])
  return jnp.pad(x, pads)


def _row_tile(g: _Geometry, rows: int, rest: tuple):
  """BlockSpec of tile i of a [B, R, *rest, C] array: [rows, *rest, block_c] on grid (batch,
  channel block, row tile)."""
  zeros = (0,) * len(rest)
  return pl.BlockSpec((pl.squeezed, rows, *rest, g.block_c), lambda b, ci, i: (b, i, *zeros, ci))


def _call(c: Config, g: _Geometry, kernel, xp, other, other_spec, out_shape_, out_spec, name):
  """pallas_call of `kernel` on grid (batch, channel blocks, row tiles) with tile i's input
  window xp[b, i * block : i * block + window] (an Element window: consecutive windows
  overlap by the halo), `other` (weights or dy) and, for bf16, an f32 copy of the window."""
  rest = xp.shape[2:-1]
  x_spec = pl.BlockSpec(
      (pl.squeezed, pl.Element(g.window), *map(pl.Element, rest), pl.Element(g.block_c)),
      lambda b, ci, i: (b, i * c.block, *(0,) * len(rest), ci * g.block_c))
  f32 = xp.dtype == jnp.float32
  return pl.pallas_call(
      kernel, out_shape=out_shape_, grid=(xp.shape[0], g.blocks_c, g.tiles),
      in_specs=[x_spec, other_spec], out_specs=out_spec,
      scratch_shapes=[] if f32 else [pltpu.VMEM((g.window, *rest, g.block_c), jnp.float32)],
      compiler_params=compiler_params("tpu", ("parallel",) * 3), interpret=c.interpret,
      name=name,
  )(xp, other)


def forward(c: Config, x, v, name: str):
  """The cross-correlation of x with the (already flipped, for 1-D) kernel v under c.pads."""
  B, C = x.shape[0], x.shape[-1]
  ksize = v.shape[:-1]
  g = _geometry(c, x, ksize)
  xp = _padded_input(c, g, x)
  vp = jnp.pad(v.astype(jnp.float32), [(0, 0)] * len(ksize) + [(0, g.blocks_c * g.block_c - C)])
  zeros = (0,) * (len(ksize) + 1)
  y = _call(
      c, g, _fwd1d_kernel if len(ksize) == 1 else _fwd2d_kernel, xp, vp[..., None, :],
      pl.BlockSpec((*ksize, 1, g.block_c), lambda b, ci, i: (*zeros, ci)),
      jax.ShapeDtypeStruct((B, g.tiles * c.block, *g.out[1:], g.blocks_c * g.block_c), x.dtype),
      _row_tile(g, c.block, g.out[1:]), name)
  return y[:, :g.out[0], ..., :C]


def weight_grad(c: Config, x, dy, ksize, name: str):
  """Per-tile float32 partials [B, tiles, *ksize, C] from the kernel, summed by XLA."""
  B, C = x.shape[0], x.shape[-1]
  g = _geometry(c, x, ksize)
  xp = _padded_input(c, g, x)
  dyp = jnp.pad(dy, [(0, 0), (0, g.tiles * c.block - g.out[0])] + [(0, 0)] * (len(ksize) - 1)
                + [(0, g.blocks_c * g.block_c - C)])
  zeros = (0,) * (len(ksize) + 1)
  partial = _call(
      c, g, _dw1d_kernel if len(ksize) == 1 else _dw2d_kernel, xp, dyp,
      _row_tile(g, c.block, g.out[1:]),
      jax.ShapeDtypeStruct((B, g.tiles, *ksize, 1, g.blocks_c * g.block_c), jnp.float32),
      pl.BlockSpec((pl.squeezed, pl.squeezed, *ksize, 1, g.block_c),
                   lambda b, ci, i: (b, i, *zeros, ci)), name)
  return jnp.sum(partial, axis=(0, 1))[..., 0, :C]
