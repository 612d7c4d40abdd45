"""LayerNorm / RMSNorm with optional LayerNorm Scaling (Sun et al. 2025) as Pallas kernels,
forward and backward under jax.custom_vjp (pallas_call has no reverse-mode rule). The maths is
reference.py's; the kernels recompute it per row tile.

Kernels, x flattened to [R, D]; grid (cdiv(R, block_rows),), every step independent
("parallel"; a two-core TPU splits it):
  * forward "fused_<kind>": a [block_rows, D] tile is upcast to float32; per-row mean / mean of
    squares give xhat and rstd; y = (xhat * scale + bias) * alpha in x's dtype.
  * backward "fused_<kind>_bwd": the statistics are recomputed from the x tile (no [R]
    residuals stored), then with g = alpha * dy and dxhat = g * scale:
        layernorm: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        rmsnorm:   dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    (means over the D features), and each tile writes its partial column sums
    dscale_b = sum_rows(g * xhat), dbias_b = sum_rows(g) as float32 [1, D] rows of a
    [tiles, 1, D] array that XLA sums, so no grid axis is a reduction.
No operand is padded in HBM: rows past R in the last tile and (GPU) features past D are masked.

One kernel body serves both targets; loads, stores and the masks follow `target`, in interpret
mode too (tests check the layout the hardware gets):
  * "tpu" (Mosaic): a tile is (block_rows, D): D is the lane dimension as a full-extent block, so
    any D works (a multiple of 128 avoids padded lanes); block_rows is the sublane dimension, a
    multiple of 8 for float32 and 16 for bfloat16 (two rows per packed sublane), or all R rows.
    A partial last tile reads unspecified rows (its writes are clipped); the backward masks them
    out of the partial sums. Per-step VMEM is O(block_rows * D): block_rows shrinks to fit
    VMEM_BUDGET_BYTES and calls whose smallest tile does not fit are refused.
  * "gpu" (Triton, whose block shapes are powers of two): a tile is (block_rows, Dp) with
    Dp = next_pow2(D) and block_rows a power of two; x / dy are loaded with a mask (rows < R,
    features < D, zeros elsewhere) and y / dx stored with it, so a non-power-of-two D (768,
    1536, ...) runs padded in registers only; scale / bias / the partial sums are padded to Dp
    (vectors, cheap). block_rows * Dp is kept near GPU_TILE_ELEMS (one program's registers);
    D > GPU_MAX_FEATURES is refused.
Lowered for both targets by tests/pallas_kernels/fused_norm/test_lowering.py; never compiled on a
device yet.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._tiling import SUBLANES, compiler_params, next_pow2
from pallas_kernels.fused_norm.reference import layer_scale

DEFAULT_BLOCK_ROWS = 256
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM
GPU_TILE_ELEMS = 8192  # float32 elements of one tile per Triton program (registers)
GPU_MAX_FEATURES = 16384  # one padded row per program at most


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one call (hashable: a custom_vjp nondiff arg)."""
  kind: str
  eps: float
  alpha: float  # LayerNorm Scaling factor 1 / sqrt(layer_index), or 1
  has_bias: bool
  rows: int  # R
  features: int  # D
  block_rows: int
  target: str  # "tpu" or "gpu"
  interpret: bool

  @property
  def width(self) -> int:
    """The tile's feature extent: D on TPU, next_pow2(D) on GPU."""
    return next_pow2(self.features) if self.target == "gpu" else self.features

  @property
  def tiles(self) -> int:
    return -(-self.rows // self.block_rows)


def _is_pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def row_align(dtype) -> int:
  """TPU row-block multiple: 8 sublanes of 32-bit values, 16 rows of 16-bit ones."""
  return SUBLANES * max(1, 4 // jnp.dtype(dtype).itemsize)


def block_rows_error(value: int, rows: int, dtype, target: str) -> str | None:
  """Why `value` is not a valid block_rows for `target` (None if it is)."""
  if target == "gpu":
    return None if _is_pow2(value) else f"block_rows={value}: Triton needs a power of two"
  align = row_align(dtype)
  if value % align and value < rows:
    return (f"block_rows={value}: the TPU needs a multiple of {align} ({jnp.dtype(dtype).name} "
            f"sublanes) or at least all {rows} rows")
  return None


def _vmem_bytes(block_rows: int, features: int, itemsize: int) -> int:
  """Rough per-step VMEM of the larger (backward) kernel: double-buffered x, dy and dx tiles
  plus ~6 float32 temporaries of the tile."""
  tile = block_rows * features
  return 2 * 3 * tile * itemsize + 6 * tile * 4


def default_block_rows(rows: int, features: int, dtype, target: str) -> int:
  """GPU: a power of two with block_rows * next_pow2(D) <= GPU_TILE_ELEMS (at least 1 row).
  TPU: DEFAULT_BLOCK_ROWS (all rows when fewer), halved while the tile exceeds
  VMEM_BUDGET_BYTES."""
  if target == "gpu":
    return max(1, min(DEFAULT_BLOCK_ROWS, next_pow2(rows), GPU_TILE_ELEMS // next_pow2(features)))
  if rows <= DEFAULT_BLOCK_ROWS:
    block = rows
  else:
    block = DEFAULT_BLOCK_ROWS
  align, itemsize = row_align(dtype), jnp.dtype(dtype).itemsize
  while block > align and _vmem_bytes(block, features, itemsize) > VMEM_BUDGET_BYTES:
    block = max(align, (block // 2) // align * align)
  return block


def unsupported_reason(rows: int, features: int, dtype, *, block_rows: int | None,
                       target: str) -> str | None:
  """Why the `target` kernels cannot take this call (None if they can); block_rows None means
  default_block_rows. Argument validation is api.py's job."""
  if block_rows is not None:
    err = block_rows_error(block_rows, rows, dtype, target)
    if err:
      return err
  if target == "gpu":
    if next_pow2(features) > GPU_MAX_FEATURES:
      return (f"the feature dimension {features} (padded to {next_pow2(features)}) exceeds "
              f"{GPU_MAX_FEATURES}: a row must fit one Triton program's registers")
    return None
  block = min(block_rows or default_block_rows(rows, features, dtype, target), rows)
  need = _vmem_bytes(block, features, jnp.dtype(dtype).itemsize)
  if need > VMEM_BUDGET_BYTES:
    return (f"a [{block}, {features}] tile needs ~{need / 2**20:.1f} MiB of VMEM "
            f"(> {VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget); lower block_rows")
  return None


# ----------------------------------------------------------------------------- kernels


def _masks(c: Config):
  """(rows mask [br, 1] or None, features mask [1, width] or None) of this grid step: None
  where the tile holds no invalid entry."""
  rows = cols = None
  if c.rows % c.block_rows:
    ids = pl.program_id(0) * c.block_rows + jax.lax.broadcasted_iota(
        jnp.int32, (c.block_rows, 1), 0)
    rows = ids < c.rows
  if c.width != c.features:
    cols = jax.lax.broadcasted_iota(jnp.int32, (1, c.width), 1) < c.features
  return rows, cols


def _load(ref, c: Config, masks):
  """The tile as float32; on GPU masked (zeros outside rows < R, features < D)."""
  rows, cols = masks
  if c.target == "gpu" and (rows is not None or cols is not None):
    mask = functools.reduce(jnp.logical_and, [m for m in masks if m is not None])
    mask = jnp.broadcast_to(mask, (c.block_rows, c.width))
    return pltriton.load(ref, mask=mask, other=0).astype(jnp.float32)
  return ref[...].astype(jnp.float32)


def _store(ref, value, c: Config, masks):
  rows, cols = masks
  value = value.astype(ref.dtype)
  if c.target == "gpu" and (rows is not None or cols is not None):
    mask = functools.reduce(jnp.logical_and, [m for m in masks if m is not None])
    pltriton.store(ref, value, mask=jnp.broadcast_to(mask, value.shape))
  else:
    ref[...] = value


def _normalize(x, c: Config, cols):
  """(xhat, rstd) of float32 rows x [br, width] over the first D features (x is 0 beyond them
  on GPU); reference.normalize with masked means."""
  inv_d = 1.0 / c.features
  if c.kind == "layernorm":
    x = x - jnp.sum(x, axis=-1, keepdims=True) * inv_d
    if cols is not None:
      x = jnp.where(cols, x, 0.0)
  rstd = jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) * inv_d + c.eps)
  return x * rstd, rstd


def _fwd_kernel(x_ref, scale_ref, *refs, c: Config):
  bias_ref, y_ref = refs if c.has_bias else (None, *refs)
  masks = _masks(c)
  xhat, _ = _normalize(_load(x_ref, c, masks), c, masks[1])
  y = xhat * scale_ref[...].astype(jnp.float32)
  if bias_ref is not None:
    y = y + bias_ref[...].astype(jnp.float32)
  _store(y_ref, y * c.alpha, c, masks)


def _bwd_kernel(x_ref, dy_ref, scale_ref, dx_ref, dscale_ref, *refs, c: Config):
  masks = _masks(c)
  rows, cols = masks
  xhat, rstd = _normalize(_load(x_ref, c, masks), c, cols)
  g = _load(dy_ref, c, masks) * c.alpha
  if c.target == "tpu" and rows is not None:  # unspecified rows past R (zeros on GPU)
    g, xhat = jnp.where(rows, g, 0.0), jnp.where(rows, xhat, 0.0)
  dscale_ref[...] = jnp.sum(g * xhat, axis=0, keepdims=True)
  if c.has_bias:
    refs[0][...] = jnp.sum(g, axis=0, keepdims=True)
  dxhat = g * scale_ref[...].astype(jnp.float32)
  inv_d = 1.0 / c.features
  proj = jnp.sum(dxhat * xhat, axis=-1, keepdims=True) * inv_d
  if c.kind == "layernorm":
    dxhat = dxhat - jnp.sum(dxhat, axis=-1, keepdims=True) * inv_d
  _store(dx_ref, rstd * (dxhat - xhat * proj), c, masks)


# ----------------------------------------------------------------------------- pallas_calls


def _params(c: Config):
  warps = min(16, max(4, c.block_rows * c.width // 1024))
  return compiler_params(c.target, ("parallel",), num_warps=warps if c.target == "gpu" else None)


def _specs(c: Config):
  """(row tile [block_rows, width], feature vector [1, width], partial-sum row [1, width] of
  [tiles, 1, width])."""
  return (pl.BlockSpec((c.block_rows, c.width), lambda i: (i, 0)),
          pl.BlockSpec((1, c.width), lambda i: (0, 0)),
          pl.BlockSpec((pl.squeezed, 1, c.width), lambda i: (i, 0, 0)))


def _forward(c: Config, x, scale, bias):
  """x [R, D]; scale / bias [1, width]."""
  row, vec, _ = _specs(c)
  operands = (x, scale) + ((bias,) if c.has_bias else ())
  return pl.pallas_call(
      functools.partial(_fwd_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      grid=(c.tiles,), in_specs=[row, vec] + [vec] * c.has_bias, out_specs=row,
      compiler_params=_params(c), interpret=c.interpret, name=f"fused_{c.kind}",
  )(*operands)


def _backward(c: Config, x, scale, dy):
  """(dx [R, D], dscale [width], dbias [width] or None), the sums in float32."""
  row, vec, part = _specs(c)
  partial = jax.ShapeDtypeStruct((c.tiles, 1, c.width), jnp.float32)
  outs = pl.pallas_call(
      functools.partial(_bwd_kernel, c=c),
      out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype), partial) + (partial,) * c.has_bias,
      grid=(c.tiles,), in_specs=[row, row, vec], out_specs=(row, part) + (part,) * c.has_bias,
      compiler_params=_params(c), interpret=c.interpret, name=f"fused_{c.kind}_bwd",
  )(x, dy, scale)
  sums = [jnp.sum(p, axis=(0, 1)) for p in outs[1:]]
  return outs[0], sums[0], sums[1] if c.has_bias else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _norm(c: Config, x, scale, bias):
  return _forward(c, x, scale, bias)


def _norm_fwd(c: Config, x, scale, bias):
  return _forward(c, x, scale, bias), (x, scale, bias)


def _norm_bwd(c: Config, res, dy):
  x, scale, bias = res
  dx, dscale, dbias = _backward(c, x, scale, dy)
  return dx, dscale.reshape(scale.shape), None if bias is None else dbias.reshape(bias.shape)


_norm.defvjp(_norm_fwd, _norm_bwd)


def fused_norm(x, scale, bias=None, *, kind: str = "layernorm", eps: float = 1e-6,
               layer_index: int | None = None, block_rows: int | None = None,
               target: str = "tpu", interpret: bool = False) -> jax.Array:
  """reference.fused_norm as Pallas kernels for `target` ("tpu" or "gpu"; module docstring):
  x [..., D] (float32 or bfloat16), scale / bias [D]. block_rows: rows per tile (None:
  default_block_rows); interpret: run in the Pallas interpreter (how tests run the kernels on
  a CPU). The call is assumed supported (unsupported_reason is None)."""
  features = x.shape[-1]
  x2 = x.reshape(-1, features)
  rows = x2.shape[0]
  block_rows = min(block_rows or default_block_rows(rows, features, x.dtype, target),
                   rows if target == "tpu" else next_pow2(rows))
  c = Config(kind=kind, eps=float(eps), alpha=layer_scale(layer_index), has_bias=bias is not None,
             rows=rows, features=features, block_rows=block_rows, target=target,
             interpret=interpret)

  def vector(v):  # [1, width] float32 (zeros past D on GPU); cast back by autodiff
    return jnp.pad(v.astype(jnp.float32), (0, c.width - features)).reshape(1, c.width)

  y = _norm(c, x2, vector(scale), None if bias is None else vector(bias))
  return y.reshape(x.shape)
