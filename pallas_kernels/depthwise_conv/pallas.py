"""Depthwise convolutions as Pallas kernels, forward and backward (dx, dw) under jax.custom_vjp
(pallas_call has no reverse-mode rule): the causal 1-D short convolution of Hyena (Poli et al.
2023) and Mamba (Gu & Dao 2023) blocks, and the large-kernel 2-D depthwise convolution of
RepLKNet (Ding et al. 2022, up to 31x31) and ConvNeXt (Liu et al. 2022, 7x7).

Both are one primitive, a depthwise cross-correlation of a zero-padded input,
  y[b, r, (v,) c] = sum_{taps} w[i, (j,) c] xp[b, r + i, (v + j,) c]
(the 1-D convolution of reference.py is this with the kernel flipped), and its two adjoints:
  * dx is the same kernel applied to dy with the kernel flipped and the paddings
    (lo, hi) -> (k - 1 - lo, k - 1 - hi) (hence 0 <= padding <= k - 1 per side); its
    pallas_call is named "<op>_dx";
  * dw[taps, c] = sum_{b, r, (v)} dy[b, r, (v,) c] xp[b, r + i, (v + j,) c]: the kernel ("<op>_dw")
    writes float32 partial sums over disjoint parts of the positions and XLA adds them up, so
    no grid axis is a reduction and no accumulator lives across grid steps.
All arithmetic is float32 (bf16 inputs are upcast as they are read, weights are passed in f32);
outputs are cast to the input dtype, dw partials stay float32 until the final sum.

One body cannot serve both compilers, so each kernel has a variant per `target`:
  * "tpu" (Mosaic). Channels are the 128 lanes (block_c a multiple of 128 or all of C); grid
    (batch, channel blocks, row tiles), every axis "parallel". Tile i holds `block` output rows
    and reads the input window of rows [i * block, i * block + block + halo), halo = k - 1:
    a BlockSpec of pl.Element dimensions (element offsets, so consecutive windows overlap; the
    pipeline still double-buffers them, no manual DMA). Every tap is a shifted ref slice of the
    window (pl.ds; Mosaic cannot slice a value at a loop-dependent offset); bf16 windows are
    first copied to an f32 VMEM scratch, so shifted reads are of 32-bit rows. Per-tap weights
    and dw partials are [1, block_c] rows indexed on leading dimensions.
      1-D: rows are time steps on sublanes (block and halo multiples of 8, 16 for bf16); the K
        taps are unrolled over strips of <= 64 rows, so each strip's sum stays in vregs.
      2-D: window [block + kh - 1, padded width, block_c] (rows leading, width on sublanes); a
        loop over output rows and kernel rows, the kw taps of a kernel row unrolled, keeps one
        output row [width, block_c] in vregs. Per-step VMEM is O((block + kh) * width *
        block_c), independent of the image height: the default block shrinks (down to one row)
        to fit VMEM_BUDGET_BYTES, and calls that do not fit at one row are refused.
  * "gpu" (Triton, selected by its compiler params). Triton tensors must have power-of-two
    sizes and cannot be sliced at offsets in registers, so the TPU's windows cannot be
    expressed: whole-array refs in global memory, read with pl.ds at each tap's offset (the
    repeated reads of neighbouring taps hit L1/L2). 1-D runs as 2-D with one row. Forward / dx:
    grid (batch, output rows, width tiles, channel blocks); a program loops over the kh x kw
    taps accumulating a [block_w, block_c] tile. dw: grid (kh, kw, channel blocks, batch x
    position chunks); a program loops over its chunk of (row, width tile) positions. Inputs
    are zero-padded by XLA so that every power-of-two read is in bounds (no masks). Arrays past
    int32 element offsets are refused.

Only lowering (jax.export for "tpu" and "cuda" from a CPU host, jax 0.10.2 and 0.11.2) and
interpret mode have been run while writing this; the device compilers (Mosaic's layout passes,
Triton's PTX) check more, and nothing here has been timed on a device.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import LANES, SUBLANES, cdiv, compiler_params, next_pow2, round_up
from pallas_kernels.depthwise_conv.reference import conv1d_pads

DEFAULT_BLOCK_L = 256  # TPU: time steps per 1-D tile
DEFAULT_BLOCK_H = 32  # TPU: output rows per 2-D tile
STRIP_ROWS = 64  # TPU 1-D: rows summed in vregs at a time
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM
GPU_BLOCK_C = 32  # GPU: channels per program (at most)
GPU_BLOCK_W = {1: 128, 2: 64}  # GPU: width (2-D) or time (1-D) positions per program (at most)
GPU_MIN_PROGRAMS = 1024  # GPU dw: position chunks until the grid has about this many programs
INT32_MAX = 2**31 - 1  # Triton computes element offsets in int32


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one cross-correlation (hashable: a custom_vjp nondiff arg)."""
  name: str  # pallas_call name of the forward ("depthwise_conv1d" / "depthwise_conv2d")
  pads: tuple  # ((lo, hi),) for 1-D, ((top, bottom), (left, right)) for 2-D
  block: int  # TPU: output rows per tile; GPU: width (1-D: time) positions per program
  block_c: int  # channels per tile / program
  target: str  # "tpu" or "gpu"
  interpret: bool


def sublanes(dtype) -> int:
  """TPU rows per (sublane x lane) tile of `dtype`: 8 for float32, 16 for bfloat16."""
  return SUBLANES * 4 // jnp.dtype(dtype).itemsize


def halo_rows(k: int, dtype, ndim: int) -> int:
  """TPU: input rows a tile reads past its `block` rows: k - 1, rounded up to whole sublane
  tiles in 1-D (time is the sublane dimension of the window there)."""
  return round_up(k - 1, sublanes(dtype)) if ndim == 1 else k - 1


def default_block_c(channels: int, target: str) -> int:
  if target == "gpu":
    return min(next_pow2(channels), GPU_BLOCK_C)
  return channels if channels <= LANES else LANES


def out_shape(x_shape, ksize, pads) -> tuple:
  """Spatial output shape of the cross-correlation."""
  return tuple(n + lo + hi - k + 1 for n, k, (lo, hi) in zip(x_shape[1:-1], ksize, pads))


def _tpu_vmem_bytes(x_shape, ksize, dtype, block: int, block_c: int) -> int:
  """Rough TPU per-step VMEM of the widest call (dx, whose input is padded by k - 1 per side):
  double-buffered input window, output tile and f32 taps (weights, dw partials), plus the f32
  copy of a bf16 window."""
  itemsize = jnp.dtype(dtype).itemsize
  width = 1 if len(ksize) == 1 else x_shape[2] + 2 * (ksize[1] - 1)
  window = (block + halo_rows(ksize[0], dtype, len(ksize))) * width * block_c
  out = block * width * block_c
  taps = math.prod(ksize) * block_c
  return 2 * (window * itemsize + out * 4 + taps * 4) + (window * 4 if itemsize < 4 else 0)


def default_block(x_shape, ksize, pads, dtype, target: str) -> int:
  """Default `block` (Config): GPU: a power of two <= GPU_BLOCK_W covering the output width;
  TPU 1-D: 256 time steps (fewer for short sequences); TPU 2-D: up to 32 output rows, fewer
  where the window would not fit VMEM_BUDGET_BYTES (large kernels on wide images)."""
  out = out_shape(x_shape, ksize, pads)
  if target == "gpu":
    return min(next_pow2(out[-1]), GPU_BLOCK_W[len(out)])
  if len(out) == 1:
    return min(DEFAULT_BLOCK_L, round_up(out[0], sublanes(dtype)))
  bc = default_block_c(x_shape[-1], target)
  fits = [b for b in range(1, min(DEFAULT_BLOCK_H, out[0]) + 1)
          if _tpu_vmem_bytes(x_shape, ksize, dtype, b, bc) <= VMEM_BUDGET_BYTES]
  return fits[-1] if fits else 1


def unsupported_reason(x_shape, w_shape, dtype, *, pads, block: int | None,
                       block_c: int | None, target: str) -> str | None:
  """Why the `target` kernels cannot run this call (None if they can): block sizes the target
  cannot tile with, a TPU tile over the VMEM budget, a GPU array past int32 offsets. x [B, L, C]
  / w [K, C] or x [B, H, W, C] / w [kh, kw, C]; pads as Config.pads; block / block_c as given
  by the caller (None: the defaults). Argument validation is api.py's job."""
  one_d, C = len(x_shape) == 3, x_shape[-1]
  ksize = tuple(w_shape[:-1])
  if target == "gpu":
    if block_c is not None and block_c & (block_c - 1):
      return f"block_c={block_c}: Triton needs a power of two"
    if one_d and block is not None and block & (block - 1):
      return f"block_l={block}: Triton needs a power of two"
    bw = block if one_d and block else default_block(x_shape, ksize, pads, dtype, target)
    bc = block_c or default_block_c(C, target)
    width = round_up(x_shape[-2] + ksize[-1] - 1, bw) + 2 * (ksize[-1] - 1)  # widest (dx) input
    rows = 1 if one_d else x_shape[1] + 2 * (ksize[0] - 1)
    if x_shape[0] * rows * width * round_up(C, bc) > INT32_MAX:
      return "the padded arrays have more than 2**31 - 1 elements (Triton's int32 offsets)"
    return None
  if target != "tpu":
    return f"no kernel for target {target!r}"
  block_name = "block_l" if one_d else "block_h"
  if block_c is not None and block_c % LANES and block_c < C:
    return f"block_c={block_c}: Pallas on TPU needs a multiple of {LANES} (lanes) or >= C={C}"
  align = sublanes(dtype) if one_d else 1
  if block is not None and block % align:
    return f"{block_name}={block}: Pallas on TPU needs a multiple of {align} (sublanes)"
  block = block or default_block(x_shape, ksize, pads, dtype, target)
  bc = min(block_c or default_block_c(C, target), round_up(C, LANES))
  need = _tpu_vmem_bytes(x_shape, ksize, dtype, block, bc)
  if need > VMEM_BUDGET_BYTES:
    return (f"a tile needs ~{need / 2**20:.1f} MiB of VMEM (> {VMEM_BUDGET_BYTES / 2**20:.0f} "
            f"MiB budget){'; lower ' + block_name + ' or block_c' if block > 1 else ''}")
  return None


# ----------------------------------------------------------------------------- TPU (Mosaic)


def _tpu_window(x_ref, win_ref):
  """The tile's input window in float32: x_ref itself, or (bf16) its copy in win_ref."""
  if win_ref is None:
    return x_ref
  win_ref[...] = x_ref[...].astype(jnp.float32)
  return win_ref


def _strips(rows: int):
  """Static (start, size) strips of <= STRIP_ROWS rows."""
  return [(s, min(STRIP_ROWS, rows - s)) for s in range(0, rows, STRIP_ROWS)]


def _tpu_fwd1d_kernel(x_ref, v_ref, y_ref, win_ref=None):
  win = _tpu_window(x_ref, win_ref)
  for start, size in _strips(y_ref.shape[0]):
    acc = v_ref[0] * win[pl.ds(start, size), :]
    for k in range(1, v_ref.shape[0]):
      acc = acc + v_ref[k] * win[pl.ds(start + k, size), :]
    y_ref[pl.ds(start, size), :] = acc.astype(y_ref.dtype)


def _tpu_dw1d_kernel(x_ref, dy_ref, dv_ref, win_ref=None):
  win = _tpu_window(x_ref, win_ref)
  rows = dy_ref.shape[0]
  dy = dy_ref[...].astype(jnp.float32)
  for k in range(dv_ref.shape[0]):
    dv_ref[k] = jnp.sum(dy * win[pl.ds(k, rows), :], axis=0, keepdims=True)


def _tpu_fwd2d_kernel(x_ref, v_ref, y_ref, win_ref=None):
  win = _tpu_window(x_ref, win_ref)
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


def _tpu_dw2d_kernel(x_ref, dy_ref, dv_ref, win_ref=None):
  win = _tpu_window(x_ref, win_ref)
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
class _TpuGeometry:
  out: tuple  # output spatial shape
  tiles: int  # row tiles
  blocks_c: int
  block_c: int
  window: int  # input rows read per tile: block + halo


def _tpu_geometry(c: Config, x, ksize) -> _TpuGeometry:
  out = out_shape(x.shape, ksize, c.pads)
  block_c = min(c.block_c, round_up(x.shape[-1], LANES))
  return _TpuGeometry(out=out, tiles=cdiv(out[0], c.block), blocks_c=cdiv(x.shape[-1], block_c),
                      block_c=block_c, window=c.block + halo_rows(ksize[0], x.dtype, len(out)))


def _tpu_padded_input(c: Config, g: _TpuGeometry, x):
  """x zero-padded by c.pads, with extra zero rows so that the last tile's window is in
  bounds, and channels padded to whole channel blocks."""
  rows, top = x.shape[1], c.pads[0][0]
  pads = ([(0, 0), (top, (g.tiles - 1) * c.block + g.window - rows - top)] + list(c.pads[1:])
          + [(0, g.blocks_c * g.block_c - x.shape[-1])])
  return jnp.pad(x, pads)


def _row_tile(g: _TpuGeometry, rows: int, rest: tuple):
  """BlockSpec of tile i of a [B, R, *rest, C] array: [rows, *rest, block_c] on grid (batch,
  channel block, row tile)."""
  zeros = (0,) * len(rest)
  return pl.BlockSpec((pl.squeezed, rows, *rest, g.block_c), lambda b, ci, i: (b, i, *zeros, ci))


def _tpu_call(c: Config, g: _TpuGeometry, kernel, xp, other, other_spec, out_shape_, out_spec,
              name):
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


def _tpu_forward(c: Config, x, v, name: str):
  B, C = x.shape[0], x.shape[-1]
  ksize = v.shape[:-1]
  g = _tpu_geometry(c, x, ksize)
  xp = _tpu_padded_input(c, g, x)
  vp = jnp.pad(v.astype(jnp.float32), [(0, 0)] * len(ksize) + [(0, g.blocks_c * g.block_c - C)])
  zeros = (0,) * (len(ksize) + 1)
  y = _tpu_call(
      c, g, _tpu_fwd1d_kernel if len(ksize) == 1 else _tpu_fwd2d_kernel, xp, vp[..., None, :],
      pl.BlockSpec((*ksize, 1, g.block_c), lambda b, ci, i: (*zeros, ci)),
      jax.ShapeDtypeStruct((B, g.tiles * c.block, *g.out[1:], g.blocks_c * g.block_c), x.dtype),
      _row_tile(g, c.block, g.out[1:]), name)
  return y[:, :g.out[0], ..., :C]


def _tpu_weight_grad(c: Config, x, dy, ksize, name: str):
  """Per-tile float32 partials [B, tiles, *ksize, C] from the kernel, summed by XLA."""
  B, C = x.shape[0], x.shape[-1]
  g = _tpu_geometry(c, x, ksize)
  xp = _tpu_padded_input(c, g, x)
  dyp = jnp.pad(dy, [(0, 0), (0, g.tiles * c.block - g.out[0])] + [(0, 0)] * (len(ksize) - 1)
                + [(0, g.blocks_c * g.block_c - C)])
  zeros = (0,) * (len(ksize) + 1)
  partial = _tpu_call(
      c, g, _tpu_dw1d_kernel if len(ksize) == 1 else _tpu_dw2d_kernel, xp, dyp,
      _row_tile(g, c.block, g.out[1:]),
      jax.ShapeDtypeStruct((B, g.tiles, *ksize, 1, g.blocks_c * g.block_c), jnp.float32),
      pl.BlockSpec((pl.squeezed, pl.squeezed, *ksize, 1, g.block_c),
                   lambda b, ci, i: (b, i, *zeros, ci)), name)
  return jnp.sum(partial, axis=(0, 1))[..., 0, :C]


# ----------------------------------------------------------------------------- GPU (Triton)


def _gpu_fwd(x_ref, v_ref, y_ref, *, bw: int, bc: int):
  """One [bw, bc] tile of output row h: sum over taps of v[i, j] * xp[h + i, w0 + j]."""
  b, h, wt, ci = (pl.program_id(a) for a in range(4))
  w0, c0 = pl.multiple_of(wt * bw, bw), pl.multiple_of(ci * bc, bc)
  kh, kw, _ = v_ref.shape

  def kernel_row(i, acc):
    def tap(j, acc):
      xs = x_ref[b, h + i, pl.ds(w0 + j, bw), pl.ds(c0, bc)].astype(jnp.float32)
      return acc + v_ref[i, j, pl.ds(c0, bc)][None, :] * xs
    return lax.fori_loop(0, kw, tap, acc)

  acc = lax.fori_loop(0, kh, kernel_row, jnp.zeros((bw, bc), jnp.float32))
  y_ref[b, h, pl.ds(w0, bw), pl.ds(c0, bc)] = acc.astype(y_ref.dtype)


def _gpu_dw(x_ref, dy_ref, dv_ref, *, bw: int, bc: int, chunks: int):
  """dv[i, j, c-block] partial of one batch element and one chunk of its (row, width tile)
  positions: sum of dy[h, w0:w0+bw] * xp[h + i, w0+j:w0+j+bw] over the chunk."""
  i, j, ci, p = (pl.program_id(a) for a in range(4))
  b, chunk = p // chunks, p % chunks
  _, ho, wp, _ = dy_ref.shape
  w_tiles = wp // bw
  per = cdiv(ho * w_tiles, chunks)
  c0 = pl.multiple_of(ci * bc, bc)

  def position(u, acc):
    h, w0 = u // w_tiles, pl.multiple_of((u % w_tiles) * bw, bw)
    dy = dy_ref[b, h, pl.ds(w0, bw), pl.ds(c0, bc)].astype(jnp.float32)
    xs = x_ref[b, h + i, pl.ds(w0 + j, bw), pl.ds(c0, bc)].astype(jnp.float32)
    return acc + dy * xs

  start = chunk * per
  stop = jnp.minimum(start + per, ho * w_tiles)
  acc = lax.fori_loop(start, stop, position, jnp.zeros((bw, bc), jnp.float32))
  dv_ref[p, i, j, pl.ds(c0, bc)] = jnp.sum(acc, axis=0)


def _as_2d(c: Config) -> Config:
  """The 2-D config of a 1-D one (a single row: no vertical padding)."""
  return dataclasses.replace(c, pads=((0, 0), *c.pads))


def _gpu_padded(x, pads, rows: int, width: int, channels: int):
  """x [B, H, W, C] zero-padded by pads ((top, bottom), (left, right)) and then at the end to
  `rows` x `width` x `channels`."""
  (top, _), (left, _) = pads
  H, W, C = x.shape[1:]
  return jnp.pad(x, [(0, 0), (top, rows - H - top), (left, width - W - left), (0, channels - C)])


def _gpu_forward(c: Config, x, v, name: str):
  if len(c.pads) == 1:
    return _gpu_forward(_as_2d(c), x[:, None], v[None], name)[:, 0]
  B, C = x.shape[0], x.shape[-1]
  (kh, kw), bw, bc = v.shape[:2], c.block, c.block_c
  ho, wo = out_shape(x.shape, (kh, kw), c.pads)
  w_tiles, cp = cdiv(wo, bw), round_up(C, bc)
  xp = _gpu_padded(x, c.pads, ho + kh - 1, w_tiles * bw + kw - 1, cp)
  vp = jnp.pad(v.astype(jnp.float32), [(0, 0), (0, 0), (0, cp - C)])
  y = pl.pallas_call(
      functools.partial(_gpu_fwd, bw=bw, bc=bc),
      out_shape=jax.ShapeDtypeStruct((B, ho, w_tiles * bw, cp), x.dtype),
      grid=(B, ho, w_tiles, cp // bc),
      compiler_params=compiler_params("gpu", ("parallel",) * 4, num_warps=4),
      interpret=c.interpret, name=name,
  )(xp, vp)
  return y[:, :, :wo, :C]


def _gpu_weight_grad(c: Config, x, dy, ksize, name: str):
  """Float32 partials [B * chunks, kh, kw, C] from the kernel, summed by XLA."""
  if len(c.pads) == 1:
    return _gpu_weight_grad(_as_2d(c), x[:, None], dy[:, None], (1, *ksize), name)[0]
  B, C = x.shape[0], x.shape[-1]
  (kh, kw), bw, bc = ksize, c.block, c.block_c
  ho, wo = dy.shape[1:3]
  w_tiles, cp = cdiv(wo, bw), round_up(C, bc)
  xp = _gpu_padded(x, c.pads, ho + kh - 1, w_tiles * bw + kw - 1, cp)
  dyp = jnp.pad(dy, [(0, 0), (0, 0), (0, w_tiles * bw - wo), (0, cp - C)])
  programs = kh * kw * (cp // bc) * B
  chunks = max(1, min(ho * w_tiles, cdiv(GPU_MIN_PROGRAMS, programs)))
  partial = pl.pallas_call(
      functools.partial(_gpu_dw, bw=bw, bc=bc, chunks=chunks),
      out_shape=jax.ShapeDtypeStruct((B * chunks, kh, kw, cp), jnp.float32),
      grid=(kh, kw, cp // bc, B * chunks),
      compiler_params=compiler_params("gpu", ("parallel",) * 4, num_warps=4),
      interpret=c.interpret, name=name,
  )(xp, dyp)
  return jnp.sum(partial, axis=0)[..., :C]


# ----------------------------------------------------------------------------- custom_vjp


def _forward(c: Config, x, v, name: str):
  return (_tpu_forward if c.target == "tpu" else _gpu_forward)(c, x, v, name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xcorr(c: Config, x, v):
  return _forward(c, x, v, c.name)


def _xcorr_fwd(c: Config, x, v):
  return _forward(c, x, v, c.name), (x, v)


def _xcorr_bwd(c: Config, res, dy):
  x, v = res
  ksize = v.shape[:-1]
  adjoint = dataclasses.replace(c, pads=tuple((k - 1 - lo, k - 1 - hi)
                                              for k, (lo, hi) in zip(ksize, c.pads)))
  dx = _forward(adjoint, dy, jnp.flip(v, axis=tuple(range(len(ksize)))), c.name + "_dx")
  weight_grad = _tpu_weight_grad if c.target == "tpu" else _gpu_weight_grad
  return dx, weight_grad(c, x, dy, ksize, c.name + "_dw").astype(v.dtype)


_xcorr.defvjp(_xcorr_fwd, _xcorr_bwd)


def _config(name, x, w, pads, block, block_c, target, interpret) -> Config:
  if target not in ("tpu", "gpu"):
    raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")
  ksize, C = w.shape[:-1], x.shape[-1]
  reason = unsupported_reason(x.shape, w.shape, x.dtype, pads=pads, block=block,
                              block_c=block_c, target=target)
  if reason is not None:
    raise ValueError(f"pallas_kernels.{name} ({target} kernel): {reason}")
  if target == "gpu" and len(ksize) == 2:
    block = None  # the TPU's row tile; a GPU program computes part of one row
  return Config(name=name, pads=pads,
                block=block or default_block(x.shape, ksize, pads, x.dtype, target),
                block_c=block_c or default_block_c(C, target), target=target,
                interpret=interpret)


def depthwise_conv1d(x, w, *, causal: bool = True, block_l: int | None = None,
                     block_c: int | None = None, target: str = "tpu",
                     interpret: bool = False) -> jax.Array:
  """1-D depthwise convolution with the Pallas kernels of `target` ("tpu" / "gpu");
  conventions of reference.depthwise_conv1d (w[k] multiplies x[t - k]).

  block_l: time steps per tile (TPU: default 256, shrunk for short sequences, a multiple of 8
  (16 for bf16) and >= K - 1; GPU: per program, a power of two, default <= 128); block_c:
  channels per tile (TPU: default min(C, 128); GPU: a power of two, default <= 32)."""
  pads = (conv1d_pads(w.shape[0], causal),)
  c = _config("depthwise_conv1d", x, w, pads, block_l, block_c, target, interpret)
  return _xcorr(c, x, jnp.flip(w, 0))


def depthwise_conv2d(x, w, *, padding: tuple, block_h: int | None = None,
                     block_c: int | None = None, target: str = "tpu",
                     interpret: bool = False) -> jax.Array:
  """2-D depthwise cross-correlation with the Pallas kernels of `target` ("tpu" / "gpu");
  conventions of reference.depthwise_conv2d, with padding given explicitly as ((top, bottom),
  (left, right)), each 0 <= pad <= kernel size - 1.

  block_h: TPU output rows per tile (default 32, >= kh - 1; unused on GPU, whose programs each
  compute part of one row); block_c: channels per tile (as depthwise_conv1d)."""
  pads = tuple(tuple(p) for p in padding)
  c = _config("depthwise_conv2d", x, w, pads, block_h, block_c, target, interpret)
  return _xcorr(c, x, w)
