"""Depthwise convolutions as Pallas kernels, forward and backward (dx, dw) under jax.custom_vjp
(pallas_call has no reverse-mode rule): the causal 1-D short convolution of Hyena (Poli et al.
2023) and Mamba (Gu & Dao 2023) blocks, and the large-kernel 2-D depthwise convolution of
RepLKNet (Ding et al. 2022, up to 31x31) and ConvNeXt (Liu et al. 2022, 7x7).

Both are one primitive, a depthwise cross-correlation of a zero-padded input,
  y[b, r, (v,) c] = sum_{taps} w[i, (j,) c] xp[b, r + i, (v + j,) c]
(the 1-D convolution of reference.py is this with the kernel flipped), and its two adjoints:
  * dx is the same kernel applied to dy with the kernel flipped and the paddings
    (lo, hi) -> (k - 1 - lo, k - 1 - hi) (hence 0 <= padding <= k - 1 per side);
  * dw[taps, c] = sum_{b, r, (v)} dy[b, r, (v,) c] xp[b, r + i, (v + j,) c]: one kernel writes
    a partial sum per (batch, row tile, channel block) and XLA adds them up, so no grid axis
    is a reduction (every grid axis is parallel).

Kernels, grid (batch, channel blocks, row tiles); rows are time steps (1-D) or image rows (2-D):
  * a tile holds `block` output rows; it reads `block` input rows plus a halo of the next
    k - 1 rows. The halo is a second BlockSpec on the same padded input whose block height
    `halo` divides `block` (the smallest such divisor >= k - 1), so tile i's halo is block
    (i + 1) * block / halo: overlapping windows with plain Blocked specs, no manual DMA.
  * 1-D: tiles [block, block_c]; the K taps are an unrolled loop of shifted multiply-adds.
  * 2-D: tiles [block + halo, W + left + right, block_c] (whole padded width); a fori_loop over
    the kh kernel rows slices the window rows, and the kw taps of a row are unrolled.
All arithmetic is float32 on the VPU (bf16 inputs are upcast in the tile); outputs are cast to
the input dtype, dw partials stay float32 until the final sum.

Hardware layout assumptions (only interpret mode was run while writing this; compiled lowering is
untested):
  * TPU (Mosaic): channels are the lane (last) dimension: block_c a multiple of 128, or all of
    C when C <= 128. 1-D time tiles are sublanes: block and halo multiples of 8. 2-D tiles put
    the padded width on sublanes (a full-extent dimension, so any width) and rows in the leading
    dimension (any block >= kh - 1). Per-step VMEM is O((block + halo) * width * block_c),
    independent of the sequence length / image height; calls above VMEM_BUDGET_BYTES are
    refused (api.py falls back to XLA).
  * GPU (Triton) is not targeted: Triton needs power-of-two block dimensions, which the halo'd
    whole-width tiles are not; api.py uses XLA (cuDNN depthwise convolutions) there.
  * interpret mode: the TPU rules for the time block (multiple of 8); any block_c.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._tiling import cdiv, round_up, target
from pallas_kernels.depthwise_conv.reference import conv1d_pads

DEFAULT_BLOCK_L = 256  # time steps per 1-D tile
DEFAULT_BLOCK_H = 32  # image rows per 2-D tile
LANES = 128
SUBLANES = 8
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one cross-correlation (hashable: a custom_vjp nondiff arg)."""
  pads: tuple  # ((lo, hi),) for 1-D, ((top, bottom), (left, right)) for 2-D
  block: int  # output rows per tile
  block_c: int  # channels per tile
  interpret: bool


def halo_rows(block: int, need: int, align: int) -> int:
  """Height of the halo tile: the smallest multiple of `align` that divides `block` and is
  >= need (0 when need == 0). Requires block >= need and block % align == 0."""
  if need <= 0:
    return 0
  for h in range(align, block + 1, align):
    if block % h == 0 and h >= need:
      return h
  raise ValueError(f"block {block} cannot hold a halo of {need} rows (align {align})")


def default_block_c(channels: int) -> int:
  return channels if channels <= LANES else LANES


def default_block_l(length: int, taps: int) -> int:
  return max(min(DEFAULT_BLOCK_L, round_up(length, SUBLANES)), round_up(taps - 1, SUBLANES))


def default_block_h(out_rows: int, kh: int) -> int:
  return max(min(DEFAULT_BLOCK_H, out_rows), kh - 1, 1)


def block_error(name: str, value: int, *, need: int, align: int) -> str | None:
  """Why `value` is not a valid row block (None if it is)."""
  if value % align:
    return f"{name}={value}: Pallas needs a multiple of {align} (TPU sublanes)"
  if value < need:
    return f"{name}={value} must be >= kernel size - 1 = {need} (the halo rows of a tile)"
  return None


def block_c_error(value: int, channels: int, interpret: bool) -> str | None:
  if target(interpret) == "tpu" and value % LANES and value < channels:
    return f"block_c={value}: Pallas on TPU needs a multiple of {LANES} (lanes) or >= C"
  return None


def _vmem_bytes(block: int, halo: int, width_in: int, width_out: int, block_c: int,
                itemsize: int) -> int:
  """Rough per-step VMEM: double-buffered input + halo + output tiles, f32 window and temps."""
  window = (block + halo) * width_in * block_c
  return 2 * window * itemsize + 2 * block * width_out * block_c * itemsize + 3 * window * 4


def unsupported_reason(x_shape, w_shape, dtype, *, block: int, block_c: int,
                       interpret: bool) -> str | None:
  """Why this call cannot run as Pallas kernels here (None if it can); argument validation is
  api.py's job. x [B, L, C] / w [K, C] or x [B, H, W, C] / w [kh, kw, C]."""
  t = target(interpret)
  if t == "interpret":
    return None
  if t == "gpu":
    return ("the depthwise kernels are laid out for TPU; Triton needs power-of-two block "
            "dimensions, which the halo'd tiles are not")
  if t != "tpu":
    return f"compiled Pallas kernels need a TPU; the default backend is {t}"
  k = w_shape[0]
  halo = halo_rows(block, k - 1, SUBLANES if len(x_shape) == 3 else 1)
  width = 1 if len(x_shape) == 3 else x_shape[2] + 2 * (w_shape[1] - 1)  # widest (dx) window
  need = _vmem_bytes(block, halo, width, width, block_c, jnp.dtype(dtype).itemsize)
  if need > VMEM_BUDGET_BYTES:
    return (f"a tile needs ~{need / 2**20:.1f} MiB of VMEM (> {VMEM_BUDGET_BYTES / 2**20:.0f} "
            f"MiB budget); lower block or block_c")
  return None


# ----------------------------------------------------------------------------- kernels


def _refs(refs, has_halo):
  """(x_ref, halo_ref or None, *rest) from a kernel's flat ref list."""
  return refs if has_halo else (refs[0], None, *refs[1:])


def _window(x_ref, halo_ref):
  """The tile's input rows followed by its halo rows, in float32."""
  x = x_ref[...].astype(jnp.float32)
  if halo_ref is None:
    return x
  return jnp.concatenate([x, halo_ref[...].astype(jnp.float32)], axis=0)


def _fwd1d_kernel(*refs, has_halo: bool):
  x_ref, halo_ref, v_ref, y_ref = _refs(refs, has_halo)
  bl = y_ref.shape[0]
  xw = _window(x_ref, halo_ref)  # [bl + halo, bc]
  v = v_ref[...].astype(jnp.float32)  # [K, bc]
  acc = v[0] * xw[:bl]
  for j in range(1, v.shape[0]):
    acc = acc + v[j] * xw[j:j + bl]
  y_ref[...] = acc.astype(y_ref.dtype)


def _dw1d_kernel(*refs, has_halo: bool):
  x_ref, halo_ref, dy_ref, dv_ref = _refs(refs, has_halo)
  dy = dy_ref[...].astype(jnp.float32)  # [bl, bc]
  bl = dy.shape[0]
  xw = _window(x_ref, halo_ref)
  dv_ref[...] = jnp.stack([jnp.sum(dy * xw[j:j + bl], axis=0) for j in range(dv_ref.shape[0])])


def _fwd2d_kernel(*refs, has_halo: bool):
  x_ref, halo_ref, v_ref, y_ref = _refs(refs, has_halo)
  bh, wo, _ = y_ref.shape
  kh, kw, _ = v_ref.shape
  xw = _window(x_ref, halo_ref)  # [bh + halo, wo + kw - 1, bc]

  def kernel_row(i, acc):
    rows = lax.dynamic_slice_in_dim(xw, i, bh, axis=0)
    vi = v_ref[i].astype(jnp.float32)  # [kw, bc]
    for j in range(kw):
      acc = acc + vi[j] * rows[:, j:j + wo]
    return acc

  acc = lax.fori_loop(0, kh, kernel_row, jnp.zeros(y_ref.shape, jnp.float32))
  y_ref[...] = acc.astype(y_ref.dtype)


def _dw2d_kernel(*refs, has_halo: bool):
  x_ref, halo_ref, dy_ref, dv_ref = _refs(refs, has_halo)
  dy = dy_ref[...].astype(jnp.float32)  # [bh, wo, bc]
  bh, wo, _ = dy.shape
  kh, kw, _ = dv_ref.shape
  xw = _window(x_ref, halo_ref)

  def kernel_row(i, carry):
    rows = lax.dynamic_slice_in_dim(xw, i, bh, axis=0)
    taps = [jnp.sum(dy * rows[:, j:j + wo], axis=(0, 1)) for j in range(kw)]
    dv_ref[pl.ds(i, 1)] = jnp.stack(taps)[None]
    return carry

  lax.fori_loop(0, kh, kernel_row, 0)


# ----------------------------------------------------------------------------- pallas_calls


@dataclasses.dataclass(frozen=True)
class _Geometry:
  out: tuple  # output spatial shape
  tiles: int  # row tiles
  blocks_c: int
  halo: int


def _geometry(c: Config, x_shape, ksize) -> _Geometry:
  spatial = x_shape[1:-1]
  out = tuple(n + lo + hi - k + 1 for n, k, (lo, hi) in zip(spatial, ksize, c.pads))
  align = SUBLANES if len(spatial) == 1 else 1
  return _Geometry(out=out, tiles=cdiv(out[0], c.block), blocks_c=cdiv(x_shape[-1], c.block_c),
                   halo=halo_rows(c.block, ksize[0] - 1, align))


def _padded_input(c: Config, g: _Geometry, x):
  """x zero-padded by c.pads, with extra zero rows so that every tile and halo is in bounds,
  and channels padded to whole channel blocks."""
  rows, top = x.shape[1], c.pads[0][0]
  pads = ([(0, 0), (top, g.tiles * c.block + g.halo - rows - top)] + list(c.pads[1:])
          + [(0, g.blocks_c * c.block_c - x.shape[-1])])
  return jnp.pad(x, pads)


def _row_tile(c: Config, rows: int, rest: tuple, row_block):
  """BlockSpec of a [rows, *rest, block_c] tile of a [B, R, *rest, C] array on grid
  (batch, channel block, row tile); row_block(i) is the block index along R."""
  zeros = (0,) * len(rest)
  return pl.BlockSpec((pl.squeezed, rows, *rest, c.block_c),
                      lambda b, ci, i: (b, row_block(i), *zeros, ci))


def _input_specs(c: Config, g: _Geometry, xp):
  """Specs and operands for the tile and (when the kernel has more than one row) its halo."""
  rest = xp.shape[2:-1]
  specs, args = [_row_tile(c, c.block, rest, lambda i: i)], [xp]
  if g.halo:
    step = c.block // g.halo
    specs.append(_row_tile(c, g.halo, rest, lambda i: (i + 1) * step))
    args.append(xp)
  return specs, args


def _forward(c: Config, x, v):
  """y = cross-correlation of pad(x, c.pads) with v (x [B, *spatial, C], v [*ksize, C])."""
  B, C = x.shape[0], x.shape[-1]
  ksize = v.shape[:-1]
  g = _geometry(c, x.shape, ksize)
  xp = _padded_input(c, g, x)
  vp = jnp.pad(v, [(0, 0)] * len(ksize) + [(0, g.blocks_c * c.block_c - C)])
  specs, args = _input_specs(c, g, xp)
  zeros = (0,) * len(ksize)
  w_spec = pl.BlockSpec((*ksize, c.block_c), lambda b, ci, i: (*zeros, ci))
  one_d = len(ksize) == 1
  y = pl.pallas_call(
      functools.partial(_fwd1d_kernel if one_d else _fwd2d_kernel, has_halo=bool(g.halo)),
      out_shape=jax.ShapeDtypeStruct((B, g.tiles * c.block, *g.out[1:], g.blocks_c * c.block_c),
                                     x.dtype),
      grid=(B, g.blocks_c, g.tiles), in_specs=specs + [w_spec],
      out_specs=_row_tile(c, c.block, g.out[1:], lambda i: i), interpret=c.interpret,
      name="depthwise_conv1d" if one_d else "depthwise_conv2d",
  )(*args, vp)
  return y[:, :g.out[0], ..., :C]


def _weight_grad(c: Config, x, dy, ksize):
  """dv[taps, c] = sum over batch and positions of dy * shifted pad(x): per-tile float32
  partials [B, tiles, *ksize, C] from the kernel, summed by XLA."""
  B, C = x.shape[0], x.shape[-1]
  g = _geometry(c, x.shape, ksize)
  xp = _padded_input(c, g, x)
  dyp = jnp.pad(dy, [(0, 0), (0, g.tiles * c.block - g.out[0])] + [(0, 0)] * (len(ksize) - 1)
                + [(0, g.blocks_c * c.block_c - C)])
  specs, args = _input_specs(c, g, xp)
  zeros = (0,) * len(ksize)
  one_d = len(ksize) == 1
  partial = pl.pallas_call(
      functools.partial(_dw1d_kernel if one_d else _dw2d_kernel, has_halo=bool(g.halo)),
      out_shape=jax.ShapeDtypeStruct((B, g.tiles, *ksize, g.blocks_c * c.block_c), jnp.float32),
      grid=(B, g.blocks_c, g.tiles),
      in_specs=specs + [_row_tile(c, c.block, g.out[1:], lambda i: i)],
      out_specs=pl.BlockSpec((pl.squeezed, pl.squeezed, *ksize, c.block_c),
                             lambda b, ci, i: (b, i, *zeros, ci)),
      interpret=c.interpret, name="depthwise_conv1d_dw" if one_d else "depthwise_conv2d_dw",
  )(*args, dyp)
  return jnp.sum(partial, axis=(0, 1))[..., :C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xcorr(c: Config, x, v):
  return _forward(c, x, v)


def _xcorr_fwd(c: Config, x, v):
  return _forward(c, x, v), (x, v)


def _xcorr_bwd(c: Config, res, dy):
  x, v = res
  ksize = v.shape[:-1]
  adjoint = dataclasses.replace(c, pads=tuple((k - 1 - lo, k - 1 - hi)
                                              for k, (lo, hi) in zip(ksize, c.pads)))
  dx = _forward(adjoint, dy, jnp.flip(v, axis=tuple(range(len(ksize)))))
  return dx, _weight_grad(c, x, dy, ksize).astype(v.dtype)


_xcorr.defvjp(_xcorr_fwd, _xcorr_bwd)


def depthwise_conv1d(x, w, *, causal: bool = True, block_l: int | None = None,
                     block_c: int | None = None, interpret: bool = False) -> jax.Array:
  """1-D depthwise convolution with Pallas kernels; conventions of reference.depthwise_conv1d
  (w[k] multiplies x[t - k]). block_l: time steps per tile (default 256, shrunk for short
  sequences; a multiple of 8 and >= K - 1); block_c: channels per tile (default min(C, 128))."""
  L, C = x.shape[1], x.shape[2]
  K = w.shape[0]
  c = Config(pads=(conv1d_pads(K, causal),), block=block_l or default_block_l(L, K),
             block_c=block_c or default_block_c(C), interpret=interpret)
  return _xcorr(c, x, jnp.flip(w, 0))


def depthwise_conv2d(x, w, *, padding: tuple, block_h: int | None = None,
                     block_c: int | None = None, interpret: bool = False) -> jax.Array:
  """2-D depthwise cross-correlation with Pallas kernels; conventions of
  reference.depthwise_conv2d, with padding given explicitly as ((top, bottom), (left, right)),
  each 0 <= pad <= kernel size - 1. block_h: output rows per tile (default 32, >= kh - 1);
  block_c: channels per tile (default min(C, 128))."""
  H, C = x.shape[1], x.shape[3]
  kh = w.shape[0]
  (top, bottom), _ = padding
  c = Config(pads=tuple(tuple(p) for p in padding),
             block=block_h or default_block_h(H + top + bottom - kh + 1, kh),
             block_c=block_c or default_block_c(C), interpret=interpret)
  return _xcorr(c, x, w)
