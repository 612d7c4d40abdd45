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
  * "tpu": pallas_tpu.py (Mosaic): pl.Element windows of overlapping input rows, channels on
    lanes. The default 2-D block shrinks (down to one row) to fit VMEM_BUDGET_BYTES, and calls
    that do not fit at one row are refused.
  * "gpu": pallas_gpu.py (Triton): whole-array refs in global memory read at each tap's offset,
    power-of-two tiles. Arrays past int32 element offsets are refused.
This module holds the entry points, the custom_vjp, the default tile sizes and
unsupported_reason; pallas_common.py the static Config both variants take.

Only lowering (jax.export for "tpu" and "cuda" from a CPU host, jax 0.10.2 and 0.11.2) and
interpret mode have been run while writing this; the device compilers (Mosaic's layout passes,
Triton's PTX) check more, and nothing here has been timed on a device.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels._tiling import LANES, next_pow2, round_up
from pallas_kernels.depthwise_conv import pallas_gpu, pallas_tpu
from pallas_kernels.depthwise_conv.pallas_common import Config, out_shape
from pallas_kernels.depthwise_conv.pallas_tpu import sublanes
from pallas_kernels.depthwise_conv.reference import conv1d_pads

DEFAULT_BLOCK_L = 256  # TPU: time steps per 1-D tile
DEFAULT_BLOCK_H = 32  # TPU: output rows per 2-D tile
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM
GPU_BLOCK_C = 32  # GPU: channels per program (at most)
GPU_BLOCK_W = {1: 128, 2: 64}  # GPU: width (2-D) or time (1-D) positions per program (at most)
INT32_MAX = 2**31 - 1  # Triton computes element offsets in int32
_KERNELS = {"tpu": pallas_tpu, "gpu": pallas_gpu}


def default_block_c(channels: int, target: str) -> int:
  if target == "gpu":
    return min(next_pow2(channels), GPU_BLOCK_C)
  return channels if channels <= LANES else LANES


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
          if pallas_tpu.vmem_bytes(x_shape, ksize, dtype, b, bc) <= VMEM_BUDGET_BYTES]
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
  need = pallas_tpu.vmem_bytes(x_shape, ksize, dtype, block, bc)
  if need > VMEM_BUDGET_BYTES:
    return (f"a tile needs ~{need / 2**20:.1f} MiB of VMEM (> {VMEM_BUDGET_BYTES / 2**20:.0f} "
            f"MiB budget){'; lower ' + block_name + ' or block_c' if block > 1 else ''}")
  return None


def _forward(c: Config, x, v, name: str):
  return _KERNELS[c.target].forward(c, x, v, name)


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
  dw = _KERNELS[c.target].weight_grad(c, x, dy, ksize, c.name + "_dw")
  return dx, dw.astype(v.dtype)


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
