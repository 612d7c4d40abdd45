"""FlashAttention kernels for TPU, compiled by Mosaic (Dao et al. 2022; FlashAttention-2
backward, Dao 2023). Called through pallas.attention(target="tpu").

Why a TPU variant: Mosaic pipelines HBM->VMEM copies of grid-indexed blocks, so key/value blocks
go on a grid axis (as in jax's own TPU flash attention) and the running softmax state lives in
VMEM scratch across that axis. VMEM per grid step is then a few (block, head_dim) tiles, the
same at 512 and at 32,768 keys. The GPU variant (pallas_gpu.py) instead loops over key blocks
inside one Triton program.

Kernels (arrays [batch, heads, seq, head_dim]; S = softcap(scale q k^T); G query heads per kv
head):
  * forward, grid (batch, heads, query blocks, key blocks): online softmax over the key axis
    ("arbitrary") with m, l and the f32 accumulator in scratch, initialised at key block 0 and
    written out (O and lse = m + log l) at the last one.
  * dQ, same grid: recomputes P = exp(S - lse), accumulates dQ += dS K in scratch with
    dS = P * (dO V^T - rowsum(dO * O)).
  * dK/dV, grid (batch, kv heads, key blocks, G * query blocks): the last ("arbitrary") axis
    walks the query blocks of every query head sharing the kv head (grouped-query attention
    needs no atomics), accumulating dV += P^T dO and dK += dS^T Q in scratch.
Key (query) blocks that causality or the window hide from the whole tile are skipped with
pl.when, and their index maps are clamped to a visited block, so a skipped step also issues no
copy. Segment ids: the query tile's as a [block_q, 1] column, the key tile's as a [1, block_k]
row of a [batch, key blocks, 1, block_k] array (its last two block dims are the full dims, so any
block_k that is a multiple of 8 lays out). logsumexp and rowsum(dO * O) are [seq, 1] columns.
Lowered from a CPU host with jax.export (tests/pallas_kernels/flash_attention/test_lowering.py)
and run in the Pallas interpreter; not yet compiled on a device.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import compiler_params
from pallas_kernels.flash_attention import chunked
from pallas_kernels.flash_attention.pallas_common import Config, tile_mask

_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")


def vmem_bytes(block_q: int, block_k: int, head_dim: int, itemsize: int) -> int:
  """Upper estimate of one grid step's VMEM (the larger of the forward/dQ and dK/dV kernels):
  double-buffered input and output tiles, scratch and f32 [block_q, block_k] temporaries.
  [n, 1] columns are padded to 128 lanes. Independent of the sequence length."""
  col = 128 * 4
  tiles = 6 * block_q * block_k * 4
  fwd = (2 * (block_q * head_dim * itemsize * 2 + 2 * block_k * head_dim * itemsize
              + 3 * block_q * col + 8 * block_k * 4)
         + block_q * head_dim * 4 + 2 * block_q * col + tiles)
  dkv = (2 * (2 * block_q * head_dim * itemsize + 4 * block_k * head_dim * itemsize
              + 3 * block_q * col + 8 * block_k * 4)
         + 2 * block_k * head_dim * 4 + tiles)
  return max(fwd, dkv)


def _clamp(x, lo, hi, n: int):
  """Block index x clamped to the visited range [lo, hi) (and to [0, n)): a skipped grid step
  re-names the block of a visited neighbour, so the pipeline copies nothing for it."""
  return jnp.minimum(jnp.maximum(jnp.minimum(x, hi - 1), lo), n - 1)


def _visited(x, lo, hi):
  return jnp.logical_and(x >= lo, x < hi)


def _split(refs, n_in: int, has_seg: bool):
  """(inputs, (q_seg_ref, kv_seg_ref) or None, the remaining output and scratch refs)."""
  ins, rest = refs[:n_in], refs[n_in:]
  if has_seg:
    return ins, rest[:2], rest[2:]
  return ins, None, rest


def _mask(c: Config, i, j, segs):
  return tile_mask(c, i, j, *((segs[0][...], segs[1][...]) if segs else ()))


def _fwd_kernel(*refs, c: Config, nk: int, has_seg: bool):
  (q_ref, k_ref, v_ref), segs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _split(refs, 3, has_seg)
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(_visited(j, *chunked.key_block_range(i, c, nk)))
  def _():
    s, _ = chunked.logits(q_ref[...], k_ref[...], c)
    m, l, acc = chunked.online_softmax_step((m_ref[...], l_ref[...], acc_ref[...]), s,
                                            _mask(c, i, j, segs), v_ref[...])
    m_ref[...], l_ref[...], acc_ref[...] = m, l, acc

  @pl.when(j == nk - 1)
  def _():
    o, lse = chunked.finish(m_ref[...], l_ref[...], acc_ref[...])
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = lse


def _dq_kernel(*refs, c: Config, nk: int, has_seg: bool):
  ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), segs,
   (dq_ref, acc_ref)) = _split(refs, 6, has_seg)
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(_visited(j, *chunked.key_block_range(i, c, nk)))
  def _():
    k = k_ref[...]
    s, t = chunked.logits(q_ref[...], k, c)
    p = chunked.probs(s, _mask(c, i, j, segs), lse_ref[...])
    ds = chunked.dlogits(p, chunked.matmul(do_ref[...], v_ref[...], 1, 1), delta_ref[...], t, c)
    acc_ref[...] += chunked.matmul(ds.astype(k.dtype), k, 1, 0)

  @pl.when(j == nk - 1)
  def _():
    dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(*refs, c: Config, nq: int, has_seg: bool):
  ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), segs,
   (dk_ref, dv_ref, dk_acc, dv_acc)) = _split(refs, 6, has_seg)
  j, t = pl.program_id(2), pl.program_id(3)
  i = lax.rem(t, nq)  # query block; t // nq is the query head within the group

  @pl.when(t == 0)
  def _():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  @pl.when(_visited(i, *chunked.query_block_range(j, c, nq)))
  def _():
    q, do, k = q_ref[...], do_ref[...], k_ref[...]
    s, tanh = chunked.logits(q, k, c)
    p = chunked.probs(s, _mask(c, i, j, segs), lse_ref[...])
    # explicit transposes, then plain matmuls (as jax's TPU flash attention backward)
    dv_acc[...] += chunked.matmul(p.T.astype(do.dtype), do, 1, 0)
    ds = chunked.dlogits(p, chunked.matmul(do, v_ref[...], 1, 1), delta_ref[...], tanh, c)
    dk_acc[...] += chunked.matmul(ds.T.astype(q.dtype), q, 1, 0)

  @pl.when(t == c.groups * nq - 1)
  def _():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _seg_inputs(c: Config, qs, ks):
  """q ids [B, lq] -> [B, lq, 1] columns; kv ids [B, lk] -> [B, key blocks, 1, block_k] rows."""
  B, lk = ks.shape
  return qs[:, :, None], ks.reshape(B, lk // c.block_k, 1, c.block_k)


def _call(kernel, name: str, grid, in_specs, out_specs, out_shape, scratch, c: Config):
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
      compiler_params=compiler_params("tpu", _SEMANTICS), interpret=c.interpret, name=name)


def _query_grid_specs(c: Config, nq: int, nk: int, dp: int, has_seg: bool):
  """Specs of grid (b, head, query block i, key block j): q-like tiles, [block_q, 1] columns,
  K/V tiles of the kv head (clamped to the visited key blocks), segment-id tiles."""
  sq = pl.squeezed

  def key_block(i, j):
    return _clamp(j, *chunked.key_block_range(i, c, nk), nk)

  q_tile = pl.BlockSpec((sq, sq, c.block_q, dp), lambda b, h, i, j: (b, h, i, 0))
  col = pl.BlockSpec((sq, sq, c.block_q, 1), lambda b, h, i, j: (b, h, i, 0))
  kv = pl.BlockSpec((sq, sq, c.block_k, dp),
                    lambda b, h, i, j: (b, lax.div(h, c.groups), key_block(i, j), 0))
  segs = [pl.BlockSpec((sq, c.block_q, 1), lambda b, h, i, j: (b, i, 0)),
          pl.BlockSpec((sq, sq, 1, c.block_k), lambda b, h, i, j: (b, key_block(i, j), 0, 0))]
  return q_tile, col, kv, segs if has_seg else []


def forward(c: Config, q, k, v, qs, ks):
  """O [B, H, lq, dp] and lse [B, H, lq, 1] (f32) of padded q [B, H, lq, dp], k, v [B, K, lk,
  dp] and padded segment ids qs [B, lq], ks [B, lk] (or None)."""
  B, H, lq, dp = q.shape
  nq, nk = lq // c.block_q, k.shape[2] // c.block_k
  has_seg = qs is not None
  q_tile, col, kv, seg_specs = _query_grid_specs(c, nq, nk, dp, has_seg)
  return _call(
      functools.partial(_fwd_kernel, c=c, nk=nk, has_seg=has_seg), "flash_attention_fwd",
      (B, H, nq, nk), [q_tile, kv, kv, *seg_specs], (q_tile, col),
      (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, lq, 1), jnp.float32)),
      [(c.block_q, 1), (c.block_q, 1), (c.block_q, dp)], c,
  )(q, k, v, *(_seg_inputs(c, qs, ks) if has_seg else ()))


def backward(c: Config, q, k, v, qs, ks, o, lse, do):
  """(dq, dk, dv) of forward's inputs, from its output o, lse and the cotangent do."""
  B, H, lq, dp = q.shape
  K, lk = k.shape[1], k.shape[2]
  nq, nk = lq // c.block_q, lk // c.block_k
  G = c.groups
  has_seg = qs is not None
  segs = _seg_inputs(c, qs, ks) if has_seg else ()
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

  q_tile, col, kv, seg_specs = _query_grid_specs(c, nq, nk, dp, has_seg)
  dq = _call(
      functools.partial(_dq_kernel, c=c, nk=nk, has_seg=has_seg), "flash_attention_dq",
      (B, H, nq, nk), [q_tile, kv, kv, q_tile, col, col, *seg_specs], q_tile,
      jax.ShapeDtypeStruct(q.shape, q.dtype), [(c.block_q, dp)], c,
  )(q, k, v, do, lse, delta, *segs)

  sq = pl.squeezed

  def query_block(j, t):
    return _clamp(lax.rem(t, nq), *chunked.query_block_range(j, c, nq), nq)

  def head_index(b, h, j, t):  # grid (b, kv head h, key block j, t = g * nq + query block)
    return b, h * G + lax.div(t, nq), query_block(j, t), 0

  q_tile = pl.BlockSpec((sq, sq, c.block_q, dp), head_index)
  col = pl.BlockSpec((sq, sq, c.block_q, 1), head_index)
  k_tile = pl.BlockSpec((sq, sq, c.block_k, dp), lambda b, h, j, t: (b, h, j, 0))
  seg_specs = [pl.BlockSpec((sq, c.block_q, 1), lambda b, h, j, t: (b, query_block(j, t), 0)),
               pl.BlockSpec((sq, sq, 1, c.block_k), lambda b, h, j, t: (b, j, 0, 0))]
  dk, dv = _call(
      functools.partial(_dkv_kernel, c=c, nq=nq, has_seg=has_seg), "flash_attention_dkv",
      (B, K, nk, G * nq), [q_tile, k_tile, k_tile, q_tile, col, col,
                           *(seg_specs if has_seg else [])],
      (k_tile, k_tile),
      (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      [(c.block_k, dp), (c.block_k, dp)], c,
  )(q, k, v, do, lse, delta, *segs)
  return dq, dk, dv
