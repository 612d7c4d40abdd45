"""Long causal convolution as block-Toeplitz Pallas kernels whose memory is linear in the length,
forward and backward under jax.custom_vjp (pallas_call has no reverse-mode rule).

With blocks of T time steps, y = k * u is block lower-triangular Toeplitz per channel:
  y_i = sum_{j <= i} T_{i-j} u_j,   T_d[r, s] = k[d T + r - s]  (0 where the index is < 0)
Each T_d is built inside the kernel, per (output block i, input block j) step, from the 2T taps
k[(d-1) T .. (d+1) T) it needs: nothing of size L x T exists in memory. The taps come as
F = reverse-in-time(T zeros ++ k), so that T_d's taps are F's blocks nb-1-d and nb-d:
  T_d[r, s] = w[T - 1 - r + s],  w = F[(nb-1-d) T : (nb+1-d) T]                      (1)
Gradients:
  * du = the same convolution in reversed time (the adjoint of a causal Toeplitz operator is
    anti-causal): the forward kernels on reverse(dy), reversed back.
  * dk by lag block d: dk[d T + q] = sum_b sum_{i >= d} sum_r dy_i[b, r] u[b, (i-d) T + r - q],
    the same shape of sum with the roles swapped: the [T, T] Toeplitz of u's window
    (G = reverse-in-time(T zeros ++ u), blocks nb-1-(i-d) and nb-(i-d)) against dy_i.

Kernels (NAMES): "long_conv_toeplitz" (y), "long_conv_toeplitz_du" (the same kernel on reversed
dy), "long_conv_toeplitz_grad" (dk). Per target one maths, two kernel bodies, because the
hardware wants different tools; the interpreter runs the target's layout and block rules (the
TPU's strided roll as the equivalent static gather, see toeplitz_rows):
  * "tpu" (Mosaic), layout [channels, batch, time] (time on lanes). Forward grid
    (channel blocks, i, j), j the innermost "arbitrary" reduction axis (j > i skipped, its fetch
    clamped to j = i), a float32 VMEM accumulator per output tile. Per channel: w [1, 2T] is
    broadcast to [T, 2T] and a strided lane roll (pltpu.roll, row r shifted by T + 1 + r)
    turns it into T_d, (1); then [B, T] x T_d^T on the MXU. dk grid (channel blocks, d, i):
    P = dy_i^T [T, B] x window [B, 2T] on the MXU, the same strided roll aligns P's diagonals
    and a sum over rows gives dk_d's T lags. T is a multiple of 128 (lanes; fills the MXU).
    VMEM per step is O(block_c * T * (B + 8) + T^2), independent of L (`step_bytes`).
  * "gpu" (Triton: power-of-two blocks, no cross-step accumulation), layout [batch, time,
    channels] (coalesced channels). Forward grid (B, channel blocks, i) with a loop over
    j <= i inside the program; T_d is gathered from F with a [T, T, block_c] index tensor (a
    pointer gather; no Triton dot has batch dimensions, and a depthwise product has nothing to
    share across channels), multiplied with u_j and summed over s on the CUDA cores in
    float32. dk grid (channel blocks, d) with a loop over (b, i >= d), gathering u's Toeplitz.
    Registers per program O(T^2 block_c), independent of L.
Work is O(B C L^2 / 2) multiply-adds like the direct convolution (FFT: O(B C L log L); api.py's
MAX_LENGTH says where None stops picking these kernels). Lowered for both targets by
tests/pallas_kernels/long_convolution/test_lowering.py; never compiled on a device yet.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import LANES, cdiv, compiler_params, next_pow2

DEFAULT_BLOCK = {"tpu": LANES, "gpu": 16}
GPU_BLOCK_C = 32  # channels per Triton program (a 128-byte float32 row)
GPU_NUM_WARPS = 4
VMEM_BUDGET_BYTES = 8 * 2**20  # per-step tiles, of a TPU's default 16 MiB scoped VMEM
INT32_MAX = 2**31 - 1
# pallas_call names: forward, du (the forward kernel in reversed time), dk (the taps' gradient)
NAMES = {"y": "long_conv_toeplitz", "du": "long_conv_toeplitz_du", "dk": "long_conv_toeplitz_grad"}


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one blocked call (hashable: a custom_vjp nondiff arg)."""
  block: int  # T, time steps per block
  block_c: int  # channels per tile
  blocks: int  # nb, time blocks
  target: str  # "tpu" or "gpu"
  interpret: bool


def block_error(value: int, target: str) -> str | None:
  """Why `value` is not a valid time block for `target` (None if it is)."""
  if target == "tpu" and value % LANES:
    return f"block={value}: the TPU needs a multiple of {LANES} (lanes)"
  if target == "gpu" and value & (value - 1):
    return f"block={value}: Triton needs a power of two"
  return None


def step_bytes(batch: int, itemsize: int, *, block: int, block_c: int) -> int:
  """VMEM of one TPU grid step, the heavier of the two kernels, [.., B, T] tiles counted with
  B padded to 8 sublanes and every BlockSpec tile double-buffered:
    forward: taps 2 x [block_c, 1, T] float32, u and y [block_c, B, T], a float32 accumulator;
    dk: dy and 2 u windows [block_c, B, T], dk [block_c, 1, T] float32;
  plus ~4 float32 [T, 2T] temporaries of one channel's Toeplitz build. No term depends on the
  sequence length."""
  rows = max(batch, 8)
  forward = 2 * 2 * 8 * 4 + 2 * 2 * rows * itemsize + rows * 4
  dk = 2 * 3 * rows * itemsize + 2 * 8 * 4
  return block_c * block * max(forward, dk) + 4 * block * 2 * block * 4


def default_block_c(channels: int, batch: int, itemsize: int, *, block: int,
                    target: str) -> int:
  """GPU: GPU_BLOCK_C (a power of two; fewer for few channels). TPU: the most channels whose
  step fits VMEM_BUDGET_BYTES, evened out over the channel blocks (at least 1)."""
  if target == "gpu":
    return min(GPU_BLOCK_C, next_pow2(channels))
  per_channel = step_bytes(batch, itemsize, block=block, block_c=1) - step_bytes(
      batch, itemsize, block=block, block_c=0)
  fit = (VMEM_BUDGET_BYTES - step_bytes(batch, itemsize, block=block, block_c=0)) // per_channel
  fit = max(1, min(channels, fit))
  return cdiv(channels, cdiv(channels, fit))


def unsupported_reason(u_shape, dtype, *, block: int | None, block_c: int | None,
                       target: str) -> str | None:
  """Why the `target` kernels cannot take this call (None if they can); None sizes mean the
  defaults. Argument validation is api.py's job."""
  batch, length, channels = u_shape
  itemsize = jnp.dtype(dtype).itemsize
  if block is not None and (err := block_error(block, target)):
    return err
  block = block or DEFAULT_BLOCK[target]
  block_c = block_c or default_block_c(channels, batch, itemsize, block=block, target=target)
  if target == "gpu":
    if block_c & (block_c - 1):
      return f"block_c={block_c}: Triton needs a power of two"
    flat = batch * (cdiv(length, block) + 1) * block * cdiv(channels, block_c) * block_c
    if flat > INT32_MAX:
      return f"the gathered operands hold {flat} > 2^31 - 1 elements (int32 indices)"
    return None
  need = step_bytes(batch, itemsize, block=block, block_c=block_c)
  if need > VMEM_BUDGET_BYTES:
    return (f"a step with {block_c} channel(s), batch {batch} and block {block} needs "
            f"~{need / 2**20:.1f} MiB of VMEM (> {VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget); "
            "lower block_c or the batch")
  return None


def _precision(dtype):
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def reversed_windows(x, block: int, blocks: int, axis: int):
  """reverse(T zeros ++ x padded to nb T) along `axis`: (nb + 1) T entries, the source of
  equation (1)'s windows."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (block, blocks * block - x.shape[axis])
  return jnp.flip(jnp.pad(x, pad), axis)


# ----------------------------------------------------------------------------- TPU


def toeplitz_rows(w, block: int, interpret: bool):
  """[T, 2T] -> [T, T]: row r of w rolled right by T + 1 + r (a strided lane roll), its first T
  lanes: out[r, s] = w[r, T - 1 - r + s], equation (1) when every row of w is the window.
  In the interpreter the same permutation is one static gather: pltpu.roll's emulation (a
  dynamic jnp.roll per row) takes seconds to compile at T = 128; test_long_conv.py checks that
  the two agree."""
  if interpret:
    r, s = (lax.broadcasted_iota(jnp.int32, (block, block), a) for a in (0, 1))
    return jnp.take_along_axis(w, block - 1 - r + s, axis=1)
  return pltpu.roll(w, block + 1, 1, stride=1, stride_axis=0)[:, :block]


def _tpu_fwd_kernel(lo_ref, hi_ref, u_ref, y_ref, acc_ref, *, c: Config):
  """y_i = sum_{j <= i} u_j T_{i-j}^T, accumulated over the innermost grid axis j."""
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)

  @pl.when(j <= i)
  def _accumulate():
    def channel(ch, carry):
      w = jnp.concatenate([lo_ref[ch], hi_ref[ch]], axis=-1)  # [1, 2T] float32 taps
      toe = toeplitz_rows(jnp.broadcast_to(w, (c.block, 2 * c.block)), c.block, c.interpret)
      u = u_ref[ch]  # [B, T]
      acc_ref[ch] += lax.dot_general(u, toe.astype(u.dtype), (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32,
                                     precision=_precision(u.dtype))
      return carry

    lax.fori_loop(0, c.block_c, channel, 0)

  @pl.when(j == i)
  def _write():
    y_ref[...] = acc_ref[...].astype(y_ref.dtype)


def _tpu_dk_kernel(dy_ref, lo_ref, hi_ref, dk_ref, *, c: Config):
  """dk_d += column sums of the diagonals of dy_i^T window_{i-d}, over the grid axis i >= d."""
  d, i = pl.program_id(1), pl.program_id(2)

  @pl.when(i == 0)
  def _init():
    dk_ref[...] = jnp.zeros(dk_ref.shape, dk_ref.dtype)

  @pl.when(i >= d)
  def _accumulate():
    def channel(ch, carry):
      w = jnp.concatenate([lo_ref[ch], hi_ref[ch]], axis=-1)  # [B, 2T] reversed u window
      dy = dy_ref[ch]  # [B, T]
      p = lax.dot_general(dy, w, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32,
                          precision=_precision(dy.dtype))  # [T, 2T]
      dk_ref[ch] += jnp.sum(toeplitz_rows(p, c.block, c.interpret), axis=0, keepdims=True)
      return carry

    lax.fori_loop(0, c.block_c, channel, 0)


def _tpu_conv(c: Config, f, ut, name: str):
  """Forward kernel: f [Cp, 1, (nb+1) T] float32 taps, ut [Cp, B, nb T] -> y like ut."""
  cp, batch, _ = ut.shape
  nb, last = c.blocks, c.blocks - 1

  def taps(offset):  # block nb - 1 - d (+ 1) of f, d = i - min(j, i)
    return pl.BlockSpec((c.block_c, 1, c.block),
                        lambda ci, i, j: (ci, 0, last - i + jnp.minimum(j, i) + offset))

  tile = (c.block_c, batch, c.block)
  return pl.pallas_call(
      functools.partial(_tpu_fwd_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct(ut.shape, ut.dtype),
      grid=(cp // c.block_c, nb, nb),
      in_specs=[taps(0), taps(1),
                pl.BlockSpec(tile, lambda ci, i, j: (ci, 0, jnp.minimum(j, i)))],
      out_specs=pl.BlockSpec(tile, lambda ci, i, j: (ci, 0, i)),
      scratch_shapes=[pltpu.VMEM(tile, jnp.float32)],
      compiler_params=compiler_params("tpu", ("parallel", "parallel", "arbitrary")),
      interpret=c.interpret, name=name,
  )(f, f, ut)


def _tpu_dk(c: Config, dyt, g):
  """dk kernel: dyt [Cp, B, nb T], g [Cp, B, (nb+1) T] reversed u windows -> float32
  [Cp, 1, nb T]."""
  cp, batch, lp = dyt.shape
  last = c.blocks - 1

  def window(offset):  # block nb - 1 - (i' - d) (+ 1) of g, i' = max(i, d)
    return pl.BlockSpec((c.block_c, batch, c.block),
                        lambda ci, d, i: (ci, 0, last - jnp.maximum(i, d) + d + offset))

  return pl.pallas_call(
      functools.partial(_tpu_dk_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct((cp, 1, lp), jnp.float32),
      grid=(cp // c.block_c, c.blocks, c.blocks),
      in_specs=[pl.BlockSpec((c.block_c, batch, c.block),
                             lambda ci, d, i: (ci, 0, jnp.maximum(i, d))),
                window(0), window(1)],
      out_specs=pl.BlockSpec((c.block_c, 1, c.block), lambda ci, d, i: (ci, 0, d)),
      compiler_params=compiler_params("tpu", ("parallel", "parallel", "arbitrary")),
      interpret=c.interpret, name=NAMES["dk"],
  )(dyt, g, g)


# ----------------------------------------------------------------------------- GPU


def _gather_index(c: Config, row_sign: int, stride: int):
  """int32 [T, T, block_c]: (T - 1 - r + s) * stride + ch (row_sign -1, equation (1)) or
  (T + r - s) * stride + ch (row_sign +1, u's Toeplitz), plus this program's channel offset."""
  shape = (c.block, c.block, c.block_c)
  r, s, ch = (lax.broadcasted_iota(jnp.int32, shape, a) for a in range(3))
  lag = (c.block - 1 - r + s) if row_sign < 0 else (c.block + r - s)
  return lag * stride + ch


def _gpu_fwd_kernel(f_ref, u_ref, y_ref, *, c: Config):
  """Program (b, channel block, i): y_i = sum_{j <= i} T_{i-j} u_j, looping over j."""
  b, ci, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  cp = u_ref.shape[2]
  cols = pl.ds(ci * c.block_c, c.block_c)
  index = _gather_index(c, -1, cp) + ci * c.block_c

  def step(j, acc):
    toe = f_ref[index + (c.blocks - 1 - i + j) * c.block * cp].astype(jnp.float32)  # [r, s, ch]
    u = u_ref[b, pl.ds(j * c.block, c.block), cols].astype(jnp.float32)  # [s, ch]
    return acc + jnp.sum(toe * u[None], axis=1)

  acc = lax.fori_loop(0, i + 1, step, jnp.zeros((c.block, c.block_c), jnp.float32))
  y_ref[b, pl.ds(i * c.block, c.block), cols] = acc.astype(y_ref.dtype)


def _gpu_dk_kernel(dy_ref, up_ref, dk_ref, *, c: Config):
  """Program (channel block, d): dk_d[q] = sum_{b, i >= d, r} dy_i[b, r] u[b, (i-d) T + r - q],
  looping over (b, i); u's Toeplitz is gathered from up = T zeros ++ u."""
  ci, d = pl.program_id(0), pl.program_id(1)
  batch, _, cp = dy_ref.shape
  cols = pl.ds(ci * c.block_c, c.block_c)
  index = _gather_index(c, 1, cp) + ci * c.block_c
  count = c.blocks - d

  def step(t, acc):
    b, i = t // count, d + t % count
    h = up_ref[index + (b * (c.blocks + 1) + i - d) * c.block * cp].astype(jnp.float32)
    dy = dy_ref[b, pl.ds(i * c.block, c.block), cols].astype(jnp.float32)  # [r, ch]
    return acc + jnp.sum(dy[:, None] * h, axis=0)

  acc = lax.fori_loop(0, batch * count, step, jnp.zeros((c.block, c.block_c), jnp.float32))
  dk_ref[pl.ds(d * c.block, c.block), cols] = acc


def _gpu_params():
  return compiler_params("gpu", ("parallel",) * 3, num_warps=GPU_NUM_WARPS)


def _gpu_conv(c: Config, f, u, name: str):
  """Forward kernel: f [((nb+1) T) * Cp] float32 taps (flattened [time, channel]), u [B, nb T,
  Cp] -> y like u."""
  batch, _, cp = u.shape
  return pl.pallas_call(
      functools.partial(_gpu_fwd_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct(u.shape, u.dtype),
      grid=(batch, cp // c.block_c, c.blocks), compiler_params=_gpu_params(),
      interpret=c.interpret, name=name,
  )(f, u)


def _gpu_dk(c: Config, dy, up):
  """dk kernel: dy [B, nb T, Cp], up flattened [B, (nb+1) T, Cp] -> float32 [nb T, Cp]."""
  _, lp, cp = dy.shape
  return pl.pallas_call(
      functools.partial(_gpu_dk_kernel, c=c),
      out_shape=jax.ShapeDtypeStruct((lp, cp), jnp.float32),
      grid=(cp // c.block_c, c.blocks), compiler_params=_gpu_params(),
      interpret=c.interpret, name=NAMES["dk"],
  )(dy, up)


# ----------------------------------------------------------------------------- custom_vjp
# Operands in the target's layout, padded to whole blocks: u [B, nb T, Cp] (GPU) or
# [Cp, B, nb T] (TPU); k [nb T, Cp]. TIME is u's time axis.


def _time_axis(c: Config) -> int:
  return 1 if c.target == "gpu" else 2


def _conv(c: Config, k, u, name: str):
  if c.target == "gpu":
    f = reversed_windows(k.astype(jnp.float32), c.block, c.blocks, 0).ravel()
    return _gpu_conv(c, f, u, name)
  f = reversed_windows(k.astype(jnp.float32).T[:, None, :], c.block, c.blocks, 2)
  return _tpu_conv(c, f, u, name)


def _tap_grad(c: Config, dy, u):
  """dk [nb T, Cp] in float32."""
  if c.target == "gpu":
    up = jnp.pad(u, ((0, 0), (c.block, 0), (0, 0)))
    return _gpu_dk(c, dy, up.ravel())
  return _tpu_dk(c, dy, reversed_windows(u, c.block, c.blocks, 2))[:, 0, :].T


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _long_conv(c: Config, k, u):
  return _conv(c, k, u, NAMES["y"])


def _long_conv_fwd(c: Config, k, u):
  return _conv(c, k, u, NAMES["y"]), (k, u)


def _long_conv_bwd(c: Config, res, dy):
  k, u = res
  t = _time_axis(c)
  du = jnp.flip(_conv(c, k, jnp.flip(dy, t), NAMES["du"]), t)
  return _tap_grad(c, dy, u).astype(k.dtype), du


_long_conv.defvjp(_long_conv_fwd, _long_conv_bwd)


def long_conv(u, k, *, block: int | None = None, block_c: int | None = None,
              target: str = "tpu", interpret: bool = False) -> jax.Array:
  """Causal long convolution (conventions of reference.long_conv) as block-Toeplitz Pallas
  kernels for `target` ("tpu" or "gpu"; module docstring). block: time steps per block (None:
  DEFAULT_BLOCK; TPU a multiple of 128, GPU a power of two); block_c: channels per tile (None:
  default_block_c); interpret: run in the Pallas interpreter. The call is assumed supported
  (unsupported_reason is None)."""
  B, L, C = u.shape
  T = block or DEFAULT_BLOCK[target]
  nb = cdiv(L, T)
  bc = block_c or default_block_c(C, B, u.dtype.itemsize, block=T, target=target)
  cp = cdiv(C, bc) * bc
  c = Config(block=T, block_c=bc, blocks=nb, target=target, interpret=interpret)
  kp = jnp.pad(k, ((0, nb * T - k.shape[0]), (0, cp - C)))
  up = jnp.pad(u, ((0, 0), (0, nb * T - L), (0, cp - C)))
  if target == "gpu":
    return _long_conv(c, kp, up)[:, :L, :C]
  y = _long_conv(c, kp, up.transpose(2, 0, 1))  # [Cp, B, Lp]
  return y.transpose(1, 2, 0)[:, :L, :C]
