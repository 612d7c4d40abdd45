"""Depthwise convolution kernels for GPU, compiled by Triton (selected by its compiler params):
forward (also dx, with the adjoint's config) and dw. Called through pallas.depthwise_conv1d /
2d(target="gpu").

Triton tensors must have power-of-two sizes and cannot be sliced at offsets in registers, so the
TPU's windows (pallas_tpu.py) cannot be expressed: whole-array refs in global memory, read with
pl.ds at each tap's offset (the repeated reads of neighbouring taps hit L1/L2). 1-D runs as 2-D
with one row. Forward / dx: grid (batch, output rows, width tiles, channel blocks); a program
loops over the kh x kw taps accumulating a [block_w, block_c] tile. dw: grid (kh, kw, channel
blocks, batch x position chunks); a program loops over its chunk of (row, width tile)
positions. Inputs are zero-padded by XLA so that every power-of-two read is in bounds (no
masks). Arrays past int32 element offsets are refused by pallas.unsupported_reason.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._tiling import cdiv, compiler_params, round_up
from pallas_kernels.depthwise_conv.pallas_common import Config, out_shape

GPU_MIN_PROGRAMS = 1024  # GPU dw: position chunks until the grid has about this many programs


def _fwd_kernel(x_ref, v_ref, y_ref, *, bw: int, bc: int):
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


def _dw_kernel(x_ref, dy_ref, dv_ref, *, bw: int, bc: int, chunks: int):
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


def _padded(x, pads, rows: int, width: int, channels: int):
  """x [B, H, W, C] zero-padded by pads ((top, bottom), (left, right)) and then at the end to
  `rows` x `width` x `channels`."""
  (top, _), (left, _) = pads
  H, W, C = x.shape[1:]
  return jnp.pad(x, [(0, 0), (top, rows - H - top), (left, width - W - left), (0, channels - C)])


def forward(c: Config, x, v, name: str):
  """The cross-correlation of x with the (already flipped, for 1-D) kernel v under c.pads."""
  if len(c.pads) == 1:
    return forward(_as_2d(c), x[:, None], v[None], name)[:, 0]
  B, C = x.shape[0], x.shape[-1]
  (kh, kw), bw, bc = v.shape[:2], c.block, c.block_c
  ho, wo = out_shape(x.shape, (kh, kw), c.pads)
  w_tiles, cp = cdiv(wo, bw), round_up(C, bc)
  xp = _padded(x, c.pads, ho + kh - 1, w_tiles * bw + kw - 1, cp)
  vp = jnp.pad(v.astype(jnp.float32), [(0, 0), (0, 0), (0, cp - C)])
  y = pl.pallas_call(
      functools.partial(_fwd_kernel, bw=bw, bc=bc),
      out_shape=jax.ShapeDtypeStruct((B, ho, w_tiles * bw, cp), x.dtype),
      grid=(B, ho, w_tiles, cp // bc),
      compiler_params=compiler_params("gpu", ("parallel",) * 4, num_warps=4),
      interpret=c.interpret, name=name,
  )(xp, vp)
  return y[:, :, :wo, :C]


def weight_grad(c: Config, x, dy, ksize, name: str):
  """Float32 partials [B * chunks, kh, kw, C] from the kernel, summed by XLA."""
  if len(c.pads) == 1:
    return weight_grad(_as_2d(c), x[:, None], dy[:, None], (1, *ksize), name)[0]
  B, C = x.shape[0], x.shape[-1]
  (kh, kw), bw, bc = ksize, c.block, c.block_c
  ho, wo = dy.shape[1:3]
  w_tiles, cp = cdiv(wo, bw), round_up(C, bc)
  xp = _padded(x, c.pads, ho + kh - 1, w_tiles * bw + kw - 1, cp)
  dyp = jnp.pad(dy, [(0, 0), (0, 0), (0, w_tiles * bw - wo), (0, cp - C)])
  programs = kh * kw * (cp // bc) * B
  chunks = max(1, min(ho * w_tiles, cdiv(GPU_MIN_PROGRAMS, programs)))
  partial = pl.pallas_call(
      functools.partial(_dw_kernel, bw=bw, bc=bc, chunks=chunks),
      out_shape=jax.ShapeDtypeStruct((B * chunks, kh, kw, cp), jnp.float32),
      grid=(kh, kw, cp // bc, B * chunks),
      compiler_params=compiler_params("gpu", ("parallel",) * 4, num_warps=4),
      interpret=c.interpret, name=name,
  )(xp, dyp)
  return jnp.sum(partial, axis=0)[..., :C]
