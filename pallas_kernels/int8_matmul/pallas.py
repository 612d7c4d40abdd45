"""int8 x int8 -> int32 blocked matmul with a fused per-row x per-column float32 rescale, as Pallas
kernels under jax.custom_vjp (pallas_call has no reverse-mode rule). The epilogue is
reference.int8_matmul's, y = float32(acc) * x_scale[m] * w_scale[n] in that order, so the kernel
and the "xla" path agree bitwise.

Kernels, grid (M / block_m, N / block_n, K / block_k) with K innermost (a reduction:
"arbitrary"; M and N "parallel"):
  * forward: acc [block_m, block_n] int32 lives in a VMEM scratch buffer: zeroed at k = 0,
    acc += x_q tile @ w_q tile (int8 operands, int32 accumulation: exact for K <= 2^17) at every
    k, and at the last k the tile is rescaled and written as float32.
  * backward: x_q and w_q are integers (no cotangent). The scales get exact-formula gradients
        dx_scale[m] = sum_n g[m, n] acc[m, n] w_scale[n]
        dw_scale[n] = sum_m g[m, n] acc[m, n] x_scale[m]
    from a second kernel that recomputes acc tile by tile (no [M, N] int32 residual) and, at
    the last k, writes per-tile partial sums: [N / block_n, M, 1] for dx_scale and
    [M / block_m, 1, N] for dw_scale, which XLA sums over the leading axis.
Operands are zero-padded to whole tiles (zero K columns add nothing; padded rows / columns of the
output are sliced off and get zero cotangents).

Hardware layout assumptions (only interpret mode was run while writing this; compiled lowering is
untested):
  * TPU (Mosaic): int8 x int8 -> int32 runs on the MXU of TPU v5e and later. int8 packs 32 rows
    per sublane tile, so block_m is a multiple of 32 and block_k and block_n multiples of 128
    (lanes); multiples of 256 suit the v6e MXU. Scales enter as a [block_m, 1] column and a
    [1, block_n] row (full-extent minor dims), so the epilogue broadcasts without relayouts.
    VMEM per step: double-buffered int8 tiles, the f32 output (and in the backward the f32
    cotangent) tiles plus the int32 accumulator; calls above VMEM_BUDGET_BYTES are refused.
  * GPU (Triton) is not targeted: a reduction grid axis with a scratch accumulator is a
    Mosaic construct (Triton runs grid programs concurrently); api.py uses XLA there, which
    lowers the int8 dot to an int8 GEMM.
  * interpret mode: block sizes multiples of 8.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import round_up, target

DEFAULT_BLOCKS = (256, 256, 512)  # (block_m, block_n, block_k)
TPU_ALIGN = (32, 128, 128)
INTERPRET_ALIGN = (8, 8, 8)
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one call (hashable: a custom_vjp nondiff arg)."""
  block_m: int
  block_n: int
  block_k: int
  interpret: bool


def _align(interpret: bool) -> tuple[int, int, int]:
  return TPU_ALIGN if target(interpret) == "tpu" else INTERPRET_ALIGN


def block_errors(blocks, interpret: bool) -> str | None:
  """Why (block_m, block_n, block_k) (entries None = default) is not valid here, or None."""
  for name, value, align in zip(("block_m", "block_n", "block_k"), blocks, _align(interpret)):
    if value is not None and value % align:
      where = "on TPU (int8 sublane packing / lanes)" if align > 8 else "(TPU sublanes)"
      return f"{name}={value}: Pallas needs a multiple of {align} {where}"
  return None


def default_blocks(m: int, n: int, k: int, interpret: bool) -> tuple[int, int, int]:
  """DEFAULT_BLOCKS, each shrunk to the smallest aligned size covering a small dimension."""
  return tuple(min(d, round_up(size, a))
               for d, size, a in zip(DEFAULT_BLOCKS, (m, n, k), _align(interpret)))


def _vmem_bytes(block_m: int, block_n: int, block_k: int) -> int:
  """Per-step VMEM of the (larger) backward kernel: double-buffered int8 x / w tiles and f32
  cotangent tile, the int32 accumulator and the f32 product temporaries."""
  return 2 * (block_m * block_k + block_k * block_n) + (2 + 3) * block_m * block_n * 4


def unsupported_reason(blocks, *, interpret: bool) -> str | None:
  """Why this call cannot run as Pallas kernels here (None if it can); `blocks` are the
  resolved (block_m, block_n, block_k). Argument validation is api.py's job."""
  t = target(interpret)
  if t == "interpret":
    return None
  if t == "gpu":
    return ("the int8 kernel accumulates over a K grid axis in a VMEM scratch buffer, a TPU "
            "(Mosaic) construct; on GPU XLA's int8 GEMM is the implementation")
  if t != "tpu":
    return f"compiled Pallas kernels need a TPU; the default backend is {t}"
  need = _vmem_bytes(*blocks)
  if need > VMEM_BUDGET_BYTES:
    return (f"tiles {blocks} need ~{need / 2**20:.1f} MiB of VMEM (> "
            f"{VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget); lower the block sizes")
  return None


# ----------------------------------------------------------------------------- kernels


def _accumulate(x_ref, w_ref, acc_ref):
  """acc = 0 at the first K step, then acc += x tile @ w tile in int32."""
  @pl.when(pl.program_id(2) == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.int32)

  acc_ref[...] += jnp.dot(x_ref[...], w_ref[...], preferred_element_type=jnp.int32)


def _last_k():
  return pl.program_id(2) == pl.num_programs(2) - 1


def _fwd_kernel(x_ref, w_ref, xs_ref, ws_ref, y_ref, acc_ref):
  _accumulate(x_ref, w_ref, acc_ref)

  @pl.when(_last_k())
  def _epilogue():
    y_ref[...] = acc_ref[...].astype(jnp.float32) * xs_ref[...] * ws_ref[...]


def _bwd_kernel(x_ref, w_ref, xs_ref, ws_ref, g_ref, dxs_ref, dws_ref, acc_ref):
  _accumulate(x_ref, w_ref, acc_ref)

  @pl.when(_last_k())
  def _epilogue():
    t = g_ref[...] * acc_ref[...].astype(jnp.float32)  # [bm, bn]
    dxs_ref[...] = jnp.sum(t * ws_ref[...], axis=1, keepdims=True)
    dws_ref[...] = jnp.sum(t * xs_ref[...], axis=0, keepdims=True)


# ----------------------------------------------------------------------------- pallas_calls


def _call(c: Config, kernel, x, w, xs, ws, extra_in, out_shape, out_specs, name):
  """pallas_call on grid (M / bm, N / bn, K / bk) with the x, w, scale specs and an int32
  accumulator; x [Mp, Kp], w [Kp, Np], xs [Mp, 1], ws [1, Np] padded to whole tiles."""
  grid = (x.shape[0] // c.block_m, w.shape[1] // c.block_n, x.shape[1] // c.block_k)
  in_specs = [pl.BlockSpec((c.block_m, c.block_k), lambda i, j, k: (i, k)),
              pl.BlockSpec((c.block_k, c.block_n), lambda i, j, k: (k, j)),
              pl.BlockSpec((c.block_m, 1), lambda i, j, k: (i, 0)),
              pl.BlockSpec((1, c.block_n), lambda i, j, k: (0, j))]
  in_specs += [pl.BlockSpec((c.block_m, c.block_n), lambda i, j, k: (i, j))] * len(extra_in)
  params = None
  if target(c.interpret) == "tpu":
    params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((c.block_m, c.block_n), jnp.int32)],
      compiler_params=params, interpret=c.interpret, name=name,
  )(x, w, xs, ws, *extra_in)


def _forward(c: Config, x, w, xs, ws):
  return _call(c, _fwd_kernel, x, w, xs, ws, (),
               jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32),
               pl.BlockSpec((c.block_m, c.block_n), lambda i, j, k: (i, j)), "int8_matmul")


def _scale_grads(c: Config, x, w, xs, ws, g):
  """(dxs [Mp, 1], dws [1, Np]) in float32 from per-tile partial sums."""
  tiles_m, tiles_n = x.shape[0] // c.block_m, w.shape[1] // c.block_n
  dxs, dws = _call(
      c, _bwd_kernel, x, w, xs, ws, (g,),
      (jax.ShapeDtypeStruct((tiles_n, x.shape[0], 1), jnp.float32),
       jax.ShapeDtypeStruct((tiles_m, 1, w.shape[1]), jnp.float32)),
      (pl.BlockSpec((pl.squeezed, c.block_m, 1), lambda i, j, k: (j, i, 0)),
       pl.BlockSpec((pl.squeezed, 1, c.block_n), lambda i, j, k: (i, 0, j))),
      "int8_matmul_scale_grads")
  return jnp.sum(dxs, axis=0), jnp.sum(dws, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matmul(c: Config, x, w, xs, ws):
  return _forward(c, x, w, xs, ws)


def _matmul_fwd(c: Config, x, w, xs, ws):
  return _forward(c, x, w, xs, ws), (x, w, xs, ws)


def _matmul_bwd(c: Config, res, g):
  x, w, xs, ws = res
  dxs, dws = _scale_grads(c, x, w, xs, ws, g)
  return None, None, dxs, dws  # integer operands: no cotangent


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def int8_matmul(x_q, w_q, x_scale, w_scale, *, block_m: int | None = None,
                block_n: int | None = None, block_k: int | None = None,
                interpret: bool = False) -> jax.Array:
  """reference.int8_matmul with Pallas kernels: x_q int8 [M, K], w_q int8 [K, N], x_scale
  float32 [M], w_scale float32 [N] -> float32 [M, N]. Block sizes default to (256, 256, 512)
  shrunk for small dimensions (valid values per target in the module docstring); interpret: run
  in the Pallas interpreter (any backend; how the tests run the kernels on CPU)."""
  (M, K), N = x_q.shape, w_q.shape[1]
  dm, dn, dk = default_blocks(M, N, K, interpret)
  c = Config(block_m=block_m or dm, block_n=block_n or dn, block_k=block_k or dk,
             interpret=interpret)
  Mp, Np, Kp = round_up(M, c.block_m), round_up(N, c.block_n), round_up(K, c.block_k)
  x = jnp.pad(x_q, ((0, Mp - M), (0, Kp - K)))
  w = jnp.pad(w_q, ((0, Kp - K), (0, Np - N)))
  xs = jnp.pad(x_scale, (0, Mp - M))[:, None]
  ws = jnp.pad(w_scale, (0, Np - N))[None, :]
  return _matmul(c, x, w, xs, ws)[:M, :N]
