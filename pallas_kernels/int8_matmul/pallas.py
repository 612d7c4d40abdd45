"""int8 x int8 -> int32 blocked matmul with a fused per-row x per-column float32 rescale, as Pallas
kernels under jax.custom_vjp (pallas_call has no reverse-mode rule), one variant per target.
The epilogue is reference.int8_matmul's, y = float32(acc) * x_scale[m] * w_scale[n] in that
order, so every kernel and the "xla" path agree bitwise.

Kernels (both targets; `name=` of each pallas_call):
  * "int8_matmul": the forward, one [block_m, block_n] output tile per program: acc = sum over
    K blocks of x_q tile @ w_q tile (int8 operands, int32 accumulation: exact for K <= 2^17),
    then the rescaled float32 tile.
  * "int8_matmul_scale_grads": the backward. x_q and w_q are integers (no cotangent); the scales
    get exact-formula gradients
        dx_scale[m] = sum_n g[m, n] acc[m, n] w_scale[n]
        dw_scale[n] = sum_m g[m, n] acc[m, n] x_scale[m]
    from a kernel that recomputes acc tile by tile (no [M, N] int32 residual) and writes
    per-tile partial sums: [N / block_n, M, 1] for dx_scale and [M / block_m, 1, N] for
    dw_scale, which XLA sums over the leading axis.
Operands are zero-padded to whole tiles (zero K columns add nothing; padded rows / columns of the
output are sliced off and get zero cotangents).

Two variants, because the K reduction is expressed differently by the two compilers:
  * "tpu" (Mosaic): grid (M / block_m, N / block_n, K / block_k), K innermost and "arbitrary",
    M and N "parallel" (split over a megacore chip's cores); the int32 accumulator is a VMEM
    scratch buffer zeroed at k = 0 and rescaled into the output at the last k; BlockSpecs move
    the tiles (double-buffered). int8 packs 32 rows per sublane tile, so block_m is a multiple
    of 32 and block_k, block_n multiples of 128 (lanes; multiples of 256 suit the v6e MXU).
    Scales enter as a [block_m, 1] column and a [1, block_n] row (full-extent minor dims).
    Calls whose tiles exceed VMEM_BUDGET_BYTES are refused. The MXU runs int8 x int8 -> int32
    on TPU v5e and later.
  * "gpu" (Triton, pinned by its compiler params): Triton runs the programs of a grid
    concurrently, so a scratch accumulator cannot carry across grid steps: grid (M / block_m,
    N / block_n) and a fori_loop over the K blocks inside each program, the int32 accumulator a
    loop carry (registers). Refs are whole arrays in global memory, read with pl.ds. Blocks are
    powers of two (Triton tensors), at least 16 x 16 x 32 (tl.dot; int8 MMA has k = 32);
    accumulators above GPU_MAX_ACC elements and operands past int32 offsets are refused.
Only lowering (jax.export for "tpu" and "cuda", tests/pallas_kernels/int8_matmul/
test_lowering.py) and the interpreter have run these kernels; neither has been compiled on a
device.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import compiler_params, next_pow2, round_up

BLOCK_NAMES = ("block_m", "block_n", "block_k")
DEFAULT_BLOCKS = {"tpu": (256, 256, 512), "gpu": (128, 128, 64)}
TPU_ALIGN = (32, 128, 128)  # int8 sublane packing (rows), lanes, lanes
GPU_MIN_BLOCKS = (16, 16, 32)  # tl.dot's minimum tile; int8 MMA instructions have k = 32
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM
GPU_MAX_ACC = 128 * 256  # int32 accumulator elements per program (registers of 4-8 warps)
GPU_NUM_WARPS, GPU_NUM_STAGES = 4, 3
INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one call (hashable: a custom_vjp nondiff arg)."""
  block_m: int
  block_n: int
  block_k: int
  target: str
  interpret: bool


def default_blocks(m: int, n: int, k: int, target: str) -> tuple[int, int, int]:
  """DEFAULT_BLOCKS[target], each shrunk for a small dimension: to the smallest multiple of the
  TPU alignment covering it, or the smallest power of two (>= GPU_MIN_BLOCKS) covering it."""
  sizes = (m, n, k)
  if target == "tpu":
    return tuple(min(d, round_up(s, a)) for d, s, a in zip(DEFAULT_BLOCKS[target], sizes,
                                                            TPU_ALIGN))
  return tuple(min(d, max(lo, next_pow2(s))) for d, s, lo in zip(DEFAULT_BLOCKS[target], sizes,
                                                                  GPU_MIN_BLOCKS))


def resolve_blocks(blocks, m: int, n: int, k: int, target: str) -> tuple[int, int, int]:
  """The caller's (block_m, block_n, block_k), None entries replaced by default_blocks."""
  return tuple(b or d for b, d in zip(blocks, default_blocks(m, n, k, target)))


def _vmem_bytes(block_m: int, block_n: int, block_k: int) -> int:
  """Per-step VMEM of the (larger) TPU backward kernel: double-buffered int8 x / w tiles and f32
  cotangent tile, the int32 accumulator and the f32 product temporaries."""
  return 2 * (block_m * block_k + block_k * block_n) + (2 + 3) * block_m * block_n * 4


def unsupported_reason(m: int, n: int, k: int, blocks, target: str) -> str | None:
  """Why the `target` kernels cannot run an [m, k] x [k, n] call with `blocks` (the caller's
  (block_m, block_n, block_k), None entries = defaults), or None. Argument validation is
  api.py's job; the rules hold in interpret mode too (it emulates the target's layout)."""
  bm, bn, bk = blocks = resolve_blocks(blocks, m, n, k, target)
  if target == "tpu":
    for name, value, align in zip(BLOCK_NAMES, blocks, TPU_ALIGN):
      if value % align:
        return (f"{name}={value}: the TPU kernel needs a multiple of {align} (int8 packs 32 "
                f"rows per sublane tile; lanes are 128 wide)")
    need = _vmem_bytes(bm, bn, bk)
    if need > VMEM_BUDGET_BYTES:
      return (f"tiles {blocks} need ~{need / 2**20:.1f} MiB of VMEM (> "
              f"{VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget); lower the block sizes")
    return None
  if target != "gpu":
    raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")
  for name, value, low in zip(BLOCK_NAMES, blocks, GPU_MIN_BLOCKS):
    if value & (value - 1) or value < low:
      return f"{name}={value}: the Triton kernel needs a power of two >= {low} (tl.dot tiles)"
  if bm * bn > GPU_MAX_ACC:
    return (f"block_m * block_n = {bm * bn} int32 accumulator elements per program (> "
            f"{GPU_MAX_ACC}) would spill Triton's registers; lower the block sizes")
  mp, np_, kp = round_up(m, bm), round_up(n, bn), round_up(k, bk)
  if max(mp * kp, kp * np_, mp * np_) > INT32_MAX:
    return f"padded operands ({mp}, {kp}) x ({kp}, {np_}) exceed Triton's int32 offsets"
  return None


# ----------------------------------------------------------------------------- kernel bodies


def _rescale(acc, xs, ws):
  """The epilogue of reference.int8_matmul: float32(acc) * xs * ws, in that order."""
  return acc.astype(jnp.float32) * xs * ws


def _scale_grad_partials(acc, g, xs, ws):
  """(sum_n g acc ws [bm, 1], sum_m g acc xs [1, bn]) of one tile."""
  t = g * acc.astype(jnp.float32)
  return jnp.sum(t * ws, axis=1, keepdims=True), jnp.sum(t * xs, axis=0, keepdims=True)


def _tpu_accumulate(x_ref, w_ref, acc_ref):
  """acc = 0 at the first K step, then acc += x tile @ w tile in int32."""
  @pl.when(pl.program_id(2) == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.int32)

  acc_ref[...] += jnp.dot(x_ref[...], w_ref[...], preferred_element_type=jnp.int32)


def _tpu_last_k():
  return pl.program_id(2) == pl.num_programs(2) - 1


def _tpu_fwd_kernel(x_ref, w_ref, xs_ref, ws_ref, y_ref, acc_ref):
  _tpu_accumulate(x_ref, w_ref, acc_ref)

  @pl.when(_tpu_last_k())
  def _epilogue():
    y_ref[...] = _rescale(acc_ref[...], xs_ref[...], ws_ref[...])


def _tpu_bwd_kernel(x_ref, w_ref, xs_ref, ws_ref, g_ref, dxs_ref, dws_ref, acc_ref):
  _tpu_accumulate(x_ref, w_ref, acc_ref)

  @pl.when(_tpu_last_k())
  def _epilogue():
    dxs_ref[...], dws_ref[...] = _scale_grad_partials(acc_ref[...], g_ref[...], xs_ref[...],
                                                      ws_ref[...])


def _gpu_tile(c: Config, x_ref, w_ref):
  """(rows, cols, acc): program (i, j)'s output tile as pl.ds slices and its int32 x @ w,
  accumulated over the K blocks in a loop inside the program."""
  rows = pl.ds(pl.program_id(0) * c.block_m, c.block_m)
  cols = pl.ds(pl.program_id(1) * c.block_n, c.block_n)

  def step(k, acc):
    ks = pl.ds(pl.multiple_of(k * c.block_k, c.block_k), c.block_k)
    return acc + jnp.dot(x_ref[rows, ks], w_ref[ks, cols], preferred_element_type=jnp.int32)

  acc = lax.fori_loop(0, x_ref.shape[1] // c.block_k, step,
                      jnp.zeros((c.block_m, c.block_n), jnp.int32))
  return rows, cols, acc


def _gpu_fwd_kernel(c: Config, x_ref, w_ref, xs_ref, ws_ref, y_ref):
  rows, cols, acc = _gpu_tile(c, x_ref, w_ref)
  y_ref[rows, cols] = _rescale(acc, xs_ref[rows, :], ws_ref[:, cols])


def _gpu_bwd_kernel(c: Config, x_ref, w_ref, xs_ref, ws_ref, g_ref, dxs_ref, dws_ref):
  rows, cols, acc = _gpu_tile(c, x_ref, w_ref)
  dxs, dws = _scale_grad_partials(acc, g_ref[rows, cols], xs_ref[rows, :], ws_ref[:, cols])
  dxs_ref[pl.program_id(1), rows, :] = dxs
  dws_ref[pl.program_id(0), :, cols] = dws


# ----------------------------------------------------------------------------- pallas_calls


def _call(c: Config, kernels, operands, out_shape, tpu_out_specs, name: str):
  """pallas_call of kernels[c.target] on operands (x [Mp, Kp], w [Kp, Np], xs [Mp, 1],
  ws [1, Np], then [Mp, Np] tiles), padded to whole tiles. TPU: grid (Mp / bm, Np / bn,
  Kp / bk) with BlockSpecs and an int32 scratch accumulator; GPU: grid (Mp / bm, Np / bn),
  whole-array refs (module docstring)."""
  x, w = operands[:2]
  tiles = (x.shape[0] // c.block_m, w.shape[1] // c.block_n)
  if c.target == "tpu":
    tile = pl.BlockSpec((c.block_m, c.block_n), lambda i, j, k: (i, j))
    in_specs = [pl.BlockSpec((c.block_m, c.block_k), lambda i, j, k: (i, k)),
                pl.BlockSpec((c.block_k, c.block_n), lambda i, j, k: (k, j)),
                pl.BlockSpec((c.block_m, 1), lambda i, j, k: (i, 0)),
                pl.BlockSpec((1, c.block_n), lambda i, j, k: (0, j))]
    kw = dict(grid=(*tiles, x.shape[1] // c.block_k),
              in_specs=in_specs + [tile] * (len(operands) - 4),
              out_specs=tpu_out_specs(tile),
              scratch_shapes=[pltpu.VMEM((c.block_m, c.block_n), jnp.int32)],
              compiler_params=compiler_params("tpu", ("parallel", "parallel", "arbitrary")))
    kernel = kernels["tpu"]
  else:
    kw = dict(grid=tiles, compiler_params=compiler_params(
        "gpu", ("parallel", "parallel"), num_warps=GPU_NUM_WARPS, num_stages=GPU_NUM_STAGES))
    kernel = functools.partial(kernels["gpu"], c)
  return pl.pallas_call(kernel, out_shape=out_shape, interpret=c.interpret, name=name,
                        **kw)(*operands)


def _forward(c: Config, x, w, xs, ws):
  return _call(c, {"tpu": _tpu_fwd_kernel, "gpu": _gpu_fwd_kernel}, (x, w, xs, ws),
               jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32),
               lambda tile: tile, "int8_matmul")


def _scale_grads(c: Config, x, w, xs, ws, g):
  """(dxs [Mp, 1], dws [1, Np]) in float32 from per-tile partial sums."""
  tiles_m, tiles_n = x.shape[0] // c.block_m, w.shape[1] // c.block_n
  tpu_specs = lambda tile: (  # noqa: E731
      pl.BlockSpec((pl.squeezed, c.block_m, 1), lambda i, j, k: (j, i, 0)),
      pl.BlockSpec((pl.squeezed, 1, c.block_n), lambda i, j, k: (i, 0, j)))
  dxs, dws = _call(
      c, {"tpu": _tpu_bwd_kernel, "gpu": _gpu_bwd_kernel}, (x, w, xs, ws, g),
      (jax.ShapeDtypeStruct((tiles_n, x.shape[0], 1), jnp.float32),
       jax.ShapeDtypeStruct((tiles_m, 1, w.shape[1]), jnp.float32)),
      tpu_specs, "int8_matmul_scale_grads")
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


def int8_matmul(x_q, w_q, x_scale, w_scale, *, target: str, interpret: bool = False,
                block_m: int | None = None, block_n: int | None = None,
                block_k: int | None = None) -> jax.Array:
  """reference.int8_matmul with the `target` ("tpu" or "gpu") kernels: x_q int8 [M, K], w_q
  int8 [K, N], x_scale float32 [M], w_scale float32 [N] -> float32 [M, N]. Block sizes: None
  takes default_blocks; valid values per target in the module docstring (unsupported_reason
  must have accepted them). interpret: run in the Pallas interpreter with the target's layout
  (any backend; how the tests run the kernels on CPU)."""
  (M, K), N = x_q.shape, w_q.shape[1]
  bm, bn, bk = resolve_blocks((block_m, block_n, block_k), M, N, K, target)
  c = Config(block_m=bm, block_n=bn, block_k=bk, target=target, interpret=interpret)
  Mp, Np, Kp = round_up(M, bm), round_up(N, bn), round_up(K, bk)
  x = jnp.pad(x_q, ((0, Mp - M), (0, Kp - K)))
  w = jnp.pad(w_q, ((0, Kp - K), (0, Np - N)))
  xs = jnp.pad(x_scale, (0, Mp - M))[:, None]
  ws = jnp.pad(w_scale, (0, Np - N))[None, :]
  return _matmul(c, x, w, xs, ws)[:M, :N]
