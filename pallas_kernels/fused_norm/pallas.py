"""LayerNorm / RMSNorm with optional LayerNorm Scaling (Sun et al. 2025) as Pallas kernels,
forward and backward under jax.custom_vjp (pallas_call has no reverse-mode rule). The maths is
reference.normalize, shared with the "xla" path.

Kernels, rows = x flattened to [R, D] and zero-padded to whole row tiles; grid (row tiles,),
every step independent ("parallel"):
  * forward: a [block_rows, D] tile (full feature dim) is upcast to float32; per-row mean /
    mean of squares give xhat and rstd; y = (xhat * scale + bias) * alpha in x's dtype.
  * backward: the statistics are recomputed from the x tile (no [R] residuals stored), then with
    g = alpha * dy and dxhat = g * scale:
        layernorm: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        rmsnorm:   dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    (means over the feature axis), and each tile writes its partial column sums
    dscale_b = sum_rows(g * xhat), dbias_b = sum_rows(g) as float32 [1, D] rows of a
    [tiles, 1, D] array that XLA sums, so no grid axis is a reduction.
Padded rows are zeros: their xhat is 0 (finite, rstd = 1/sqrt(eps)) and their dy is 0, so they
add nothing to dscale / dbias and are sliced off y and dx.

Hardware layout assumptions (only interpret mode was run while writing this; compiled lowering is
untested):
  * TPU (Mosaic): a tile is (block_rows, D); D is the lane (last) dimension and a full-extent
    block, so any D works (a multiple of 128 avoids padded lanes); block_rows is the sublane
    dimension: a multiple of 8 for float32, 16 for bfloat16 (two rows per packed sublane).
    scale / bias are [1, D] full-extent blocks, the partial sums [1, D] blocks of [tiles, 1, D].
    Per-step VMEM is O(block_rows * D); block_rows shrinks to fit VMEM_BUDGET_BYTES and calls
    whose smallest tile does not fit are refused.
  * GPU (Triton): block dimensions must be powers of two: D a power of two, block_rows a power
    of two.
  * interpret mode: block_rows a multiple of 8; any D.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import next_pow2, round_up, target
from pallas_kernels.fused_norm.reference import layer_scale, normalize

DEFAULT_BLOCK_ROWS = 256
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one call (hashable: a custom_vjp nondiff arg)."""
  kind: str
  eps: float
  alpha: float  # LayerNorm Scaling factor 1 / sqrt(layer_index), or 1
  has_bias: bool
  block_rows: int
  interpret: bool


def _is_pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def row_align(dtype, interpret: bool) -> int:
  """Row-block multiple: TPU sublanes (8 rows of 32-bit, 16 of 16-bit values), 8 in interpret
  mode, 1 on GPU (where block_rows must be a power of two instead)."""
  t = target(interpret)
  if t == "tpu":
    return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)
  return 1 if t == "gpu" else 8


def block_rows_error(value: int, dtype, interpret: bool) -> str | None:
  """Why `value` is not a valid block_rows on this target (None if it is)."""
  if target(interpret) == "gpu":
    return None if _is_pow2(value) else f"block_rows={value}: Pallas on GPU needs a power of two"
  align = row_align(dtype, interpret)
  if value % align:
    return f"block_rows={value}: Pallas needs a multiple of {align} (TPU sublanes)"
  return None


def _vmem_bytes(block_rows: int, features: int, itemsize: int) -> int:
  """Rough per-step VMEM of the larger (backward) kernel: double-buffered x, dy and dx tiles
  plus ~6 float32 temporaries of the tile."""
  tile = block_rows * features
  return 2 * 3 * tile * itemsize + 6 * tile * 4


def default_block_rows(rows: int, features: int, dtype, interpret: bool) -> int:
  """DEFAULT_BLOCK_ROWS, shrunk for few rows and (TPU) to fit VMEM_BUDGET_BYTES."""
  if target(interpret) == "gpu":
    return min(DEFAULT_BLOCK_ROWS, next_pow2(rows))
  align = row_align(dtype, interpret)
  block = min(DEFAULT_BLOCK_ROWS, round_up(rows, align))
  itemsize = jnp.dtype(dtype).itemsize
  while block > align and _vmem_bytes(block, features, itemsize) > VMEM_BUDGET_BYTES:
    block = max(align, round_up(block // 2, align))
  return block


def unsupported_reason(rows: int, features: int, dtype, *, block_rows: int,
                       interpret: bool) -> str | None:
  """Why this call cannot run as Pallas kernels here (None if it can); argument validation is
  api.py's job."""
  t = target(interpret)
  if t == "interpret":
    return None
  if t not in ("gpu", "tpu"):
    return f"compiled Pallas kernels need a GPU or TPU; the default backend is {t}"
  if t == "gpu" and not _is_pow2(features):
    return (f"the feature dimension {features} is not a power of two (Triton block shapes); "
            "the kernels keep the whole feature axis in one tile")
  if t == "tpu":
    need = _vmem_bytes(block_rows, features, jnp.dtype(dtype).itemsize)
    if need > VMEM_BUDGET_BYTES:
      return (f"a [{block_rows}, {features}] tile needs ~{need / 2**20:.1f} MiB of VMEM "
              f"(> {VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget); lower block_rows")
  return None


# ----------------------------------------------------------------------------- kernels


def _fwd_kernel(x_ref, scale_ref, *refs, c: Config):
  bias_ref, y_ref = refs if c.has_bias else (None, *refs)
  xhat, _ = normalize(x_ref[...], kind=c.kind, eps=c.eps)  # float32 [br, D]
  y = xhat * scale_ref[...].astype(jnp.float32)
  if bias_ref is not None:
    y = y + bias_ref[...].astype(jnp.float32)
  y_ref[...] = (y * c.alpha).astype(y_ref.dtype)


def _bwd_kernel(x_ref, dy_ref, scale_ref, dx_ref, dscale_ref, *refs, c: Config):
  xhat, rstd = normalize(x_ref[...], kind=c.kind, eps=c.eps)
  g = dy_ref[...].astype(jnp.float32) * c.alpha
  dscale_ref[...] = jnp.sum(g * xhat, axis=0, keepdims=True)
  if c.has_bias:
    refs[0][...] = jnp.sum(g, axis=0, keepdims=True)
  dxhat = g * scale_ref[...].astype(jnp.float32)
  proj = jnp.mean(dxhat * xhat, axis=-1, keepdims=True)
  if c.kind == "layernorm":
    dxhat = dxhat - jnp.mean(dxhat, axis=-1, keepdims=True)
  dx_ref[...] = (rstd * (dxhat - xhat * proj)).astype(dx_ref.dtype)


# ----------------------------------------------------------------------------- pallas_calls


def _compiler_params(c: Config):
  if target(c.interpret) == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel",))
  return None


def _specs(c: Config, features: int):
  """(row tile [block_rows, D], feature vector [1, D], partial-sum row [1, D] of [tiles, 1, D])."""
  return (pl.BlockSpec((c.block_rows, features), lambda i: (i, 0)),
          pl.BlockSpec((1, features), lambda i: (0, 0)),
          pl.BlockSpec((pl.squeezed, 1, features), lambda i: (i, 0, 0)))


def _forward(c: Config, x, scale, bias):
  """x [Rp, D] with Rp a multiple of block_rows; scale / bias [1, D]."""
  rows, features = x.shape
  row, vec, _ = _specs(c, features)
  operands = (x, scale) + ((bias,) if c.has_bias else ())
  return pl.pallas_call(
      functools.partial(_fwd_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      grid=(rows // c.block_rows,), in_specs=[row, vec] + [vec] * c.has_bias, out_specs=row,
      compiler_params=_compiler_params(c), interpret=c.interpret, name=f"fused_{c.kind}",
  )(*operands)


def _backward(c: Config, x, scale, dy):
  """(dx [Rp, D], dscale [D], dbias [D] or None), the sums in float32."""
  rows, features = x.shape
  tiles = rows // c.block_rows
  row, vec, part = _specs(c, features)
  partial = jax.ShapeDtypeStruct((tiles, 1, features), jnp.float32)
  outs = pl.pallas_call(
      functools.partial(_bwd_kernel, c=c),
      out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype), partial) + (partial,) * c.has_bias,
      grid=(tiles,), in_specs=[row, row, vec], out_specs=(row, part) + (part,) * c.has_bias,
      compiler_params=_compiler_params(c), interpret=c.interpret, name=f"fused_{c.kind}_bwd",
  )(x, dy, scale)
  sums = [jnp.sum(p, axis=0) for p in outs[1:]]  # [1, D] each
  return outs[0], sums[0], sums[1] if c.has_bias else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _norm(c: Config, x, scale, bias):
  return _forward(c, x, scale, bias)


def _norm_fwd(c: Config, x, scale, bias):
  return _forward(c, x, scale, bias), (x, scale, bias)


def _norm_bwd(c: Config, res, dy):
  x, scale, bias = res
  dx, dscale, dbias = _backward(c, x, scale, dy)
  return (dx, dscale.astype(scale.dtype),
          None if bias is None else dbias.astype(bias.dtype))


_norm.defvjp(_norm_fwd, _norm_bwd)


def fused_norm(x, scale, bias=None, *, kind: str = "layernorm", eps: float = 1e-6,
               layer_index: int | None = None, block_rows: int | None = None,
               interpret: bool = False) -> jax.Array:
  """reference.fused_norm with Pallas kernels: x [..., D] (float32 or bfloat16), scale / bias
  [D]. block_rows: rows per tile (default 256, shrunk for few rows or to fit VMEM; valid values
  per target in the module docstring); interpret: run in the Pallas interpreter (any backend;
  how the tests run the kernels on CPU)."""
  features = x.shape[-1]
  x2 = x.reshape(-1, features)
  rows = x2.shape[0]
  block_rows = block_rows or default_block_rows(rows, features, x.dtype, interpret)
  c = Config(kind=kind, eps=float(eps), alpha=layer_scale(layer_index),
             has_bias=bias is not None, block_rows=block_rows, interpret=interpret)
  xp = jnp.pad(x2, ((0, round_up(rows, block_rows) - rows), (0, 0)))
  y = _norm(c, xp, scale.reshape(1, features),
            None if bias is None else bias.reshape(1, features))
  return y[:rows].reshape(x.shape)
