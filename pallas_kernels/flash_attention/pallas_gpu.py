"""FlashAttention kernels for GPU, compiled by Triton (Dao et al. 2022; FlashAttention-2 backward,
Dao 2023). Called through pallas.attention(target="gpu").

Why Triton and this shape: every pallas_call passes Triton's compiler parameters (jax >= 0.10
otherwise lowers to Mosaic GPU, whose rules these kernels do not follow: at most 256 elements per
async copy, shared-memory-resident blocks). Under Triton a BlockSpec'd ref is a pointer into
global memory, so whole-sequence K/V (and the grouped query heads' Q/dO) refs cost no on-chip
memory; each program loops over key (query) blocks with lax.fori_loop and loads pow2 tiles with
pl.ds. The TPU variant (pallas_tpu.py) instead puts key blocks on a grid axis, because Mosaic
copies whole blocks into VMEM.

Kernels (arrays [batch, heads, seq, head_dim]; S = softcap(scale q k^T)):
  * forward, grid (batch, heads, query blocks): online softmax over the key blocks the query
    tile can see (dynamic loop bounds skip the blocks causality or the window hide); writes O
    and lse = max + log(sum exp).
  * dQ, same grid: recomputes P = exp(S - lse) per key block, dQ += dS K with
    dS = P * (dO V^T - rowsum(dO * O)) (the rowsum is one XLA reduction before the kernels).
  * dK/dV, grid (batch, kv heads, key blocks): loops over the query heads sharing the kv head
    (grouped-query attention needs no atomics) and the query blocks that can see the key tile,
    dV += P^T dO, dK += dS^T Q.
Lowered from a CPU host with jax.export (tests/pallas_kernels/flash_attention/test_lowering.py)
and run in the Pallas interpreter; not yet compiled on a device.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._tiling import compiler_params
from pallas_kernels.flash_attention import chunked
from pallas_kernels.flash_attention.pallas_common import Config, tile_mask

_SEMANTICS = ("parallel", "parallel", "parallel")


def _params(dp: int):
  # jax.experimental.pallas.ops.gpu.attention's choice: 4 warps up to head_dim 64, else 8
  return compiler_params("gpu", _SEMANTICS, num_warps=4 if dp <= 64 else 8, num_stages=2)


def _split(refs, n_in, has_seg):
  """(inputs, qs_ref, ks_ref, outputs) from a kernel's flat ref list."""
  ins, rest = refs[:n_in], refs[n_in:]
  if has_seg:
    return ins, rest[0], rest[1], rest[2:]
  return ins, None, None, rest


def _mask(c: Config, i, j, qs_ref, ks_ref, k_slice):
  """tile_mask with the query tile's ids [bq, 1] and the key tile's [1, bk] (ks_ref[:, k_slice],
  or the whole ks_ref when k_slice is None)."""
  if qs_ref is None:
    return tile_mask(c, i, j)
  return tile_mask(c, i, j, qs_ref[...], ks_ref[...] if k_slice is None else ks_ref[:, k_slice])


def _fwd_kernel(*refs, c: Config, has_seg: bool):
  (q_ref, k_ref, v_ref), qs_ref, ks_ref, (o_ref, lse_ref) = _split(refs, 3, has_seg)
  i = pl.program_id(2)
  q = q_ref[...]

  def body(j, carry):
    ks = pl.ds(pl.multiple_of(j * c.block_k, c.block_k), c.block_k)
    s, _ = chunked.logits(q, k_ref[ks, :], c)
    return chunked.online_softmax_step(carry, s, _mask(c, i, j, qs_ref, ks_ref, ks),
                                       v_ref[ks, :])

  lo, hi = chunked.key_block_range(i, c, k_ref.shape[0] // c.block_k)
  carry = chunked.init_carry((c.block_q,), q.shape[-1])
  o, lse = chunked.finish(*lax.fori_loop(lo, hi, body, carry))
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse


def _dq_kernel(*refs, c: Config, has_seg: bool):
  ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qs_ref, ks_ref,
   (dq_ref,)) = _split(refs, 6, has_seg)
  i = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

  def body(j, dq):
    ks = pl.ds(pl.multiple_of(j * c.block_k, c.block_k), c.block_k)
    k = k_ref[ks, :]
    s, t = chunked.logits(q, k, c)
    p = chunked.probs(s, _mask(c, i, j, qs_ref, ks_ref, ks), lse)
    ds = chunked.dlogits(p, chunked.matmul(do, v_ref[ks, :], 1, 1), delta, t, c)
    return dq + chunked.matmul(ds.astype(k.dtype), k, 1, 0)

  lo, hi = chunked.key_block_range(i, c, k_ref.shape[0] // c.block_k)
  dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(*refs, c: Config, has_seg: bool):
  ((q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), qs_ref, ks_ref,
   (dk_ref, dv_ref)) = _split(refs, 6, has_seg)
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  lo, hi = chunked.query_block_range(j, c, q_ref.shape[1] // c.block_q)

  def head(g, carry):
    def body(i, carry):
      dk, dv = carry
      qsl = pl.ds(pl.multiple_of(i * c.block_q, c.block_q), c.block_q)
      q, do = q_ref[g, qsl, :], do_ref[g, qsl, :]
      s, t = chunked.logits(q, k, c)
      mask = _mask(c, i, j, qs_ref.at[qsl, :] if qs_ref is not None else None, ks_ref, None)
      p = chunked.probs(s, mask, lse_ref[g, qsl, :])
      dv = dv + chunked.matmul(p.astype(do.dtype), do, 0, 0)
      ds = chunked.dlogits(p, chunked.matmul(do, v, 1, 1), delta_ref[g, qsl, :], t, c)
      return dk + chunked.matmul(ds.astype(q.dtype), q, 0, 0), dv

    return lax.fori_loop(lo, hi, body, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, c.groups, head, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _seg_specs(c: Config, lq: int, lk: int, key_tiled: bool):
  """BlockSpecs of q segment ids [B, lq, 1] (one query tile) and kv segment ids [B, 1, lk]
  (whole row, or one key tile when `key_tiled`)."""
  sq = pl.squeezed
  if key_tiled:  # grid (b, kv head, key block): whole query column, one key tile
    return [pl.BlockSpec((sq, lq, 1), lambda b, h, j: (b, 0, 0)),
            pl.BlockSpec((sq, 1, c.block_k), lambda b, h, j: (b, 0, j))]
  return [pl.BlockSpec((sq, c.block_q, 1), lambda b, h, i: (b, i, 0)),
          pl.BlockSpec((sq, 1, lk), lambda b, h, i: (b, 0, 0))]


def _query_tiled_specs(c: Config, lk: int, dp: int):
  """Specs for grid (b, head, query block): q-like tiles, whole-sequence K/V of the kv head."""
  sq = pl.squeezed
  q_tile = pl.BlockSpec((sq, sq, c.block_q, dp), lambda b, h, i: (b, h, i, 0))
  col = pl.BlockSpec((sq, sq, c.block_q, 1), lambda b, h, i: (b, h, i, 0))
  kv = pl.BlockSpec((sq, sq, lk, dp), lambda b, h, i: (b, lax.div(h, c.groups), 0, 0))
  return q_tile, col, kv


def forward(c: Config, q, k, v, qs, ks):
  """O [B, H, lq, dp] and lse [B, H, lq, 1] (f32) of padded q [B, H, lq, dp], k, v [B, K, lk,
  dp] and padded segment ids qs [B, lq], ks [B, lk] (or None)."""
  B, H, lq, dp = q.shape
  lk = k.shape[2]
  has_seg = qs is not None
  q_tile, col, kv = _query_tiled_specs(c, lk, dp)
  in_specs = [q_tile, kv, kv] + (_seg_specs(c, lq, lk, False) if has_seg else [])
  return pl.pallas_call(
      functools.partial(_fwd_kernel, c=c, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, H, lq, 1), jnp.float32)),
      grid=(B, H, lq // c.block_q), in_specs=in_specs, out_specs=(q_tile, col),
      compiler_params=_params(dp), interpret=c.interpret, name="flash_attention_fwd",
  )(q, k, v, *((qs[:, :, None], ks[:, None, :]) if has_seg else ()))


def backward(c: Config, q, k, v, qs, ks, o, lse, do):
  """(dq, dk, dv) of forward's inputs, from its output o, lse and the cotangent do."""
  B, H, lq, dp = q.shape
  K, lk = k.shape[1], k.shape[2]
  G = c.groups
  has_seg = qs is not None
  segs = (qs[:, :, None], ks[:, None, :]) if has_seg else ()
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

  q_tile, col, kv = _query_tiled_specs(c, lk, dp)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, c=c, has_seg=has_seg),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(B, H, lq // c.block_q),
      in_specs=[q_tile, kv, kv, q_tile, col, col] + (_seg_specs(c, lq, lk, False) if has_seg
                                                      else []),
      out_specs=q_tile, compiler_params=_params(dp), interpret=c.interpret,
      name="flash_attention_dq",
  )(q, k, v, do, lse, delta, *segs)

  sq = pl.squeezed
  heads = pl.BlockSpec((sq, sq, G, lq, dp), lambda b, h, j: (b, h, 0, 0, 0))
  heads_col = pl.BlockSpec((sq, sq, G, lq, 1), lambda b, h, j: (b, h, 0, 0, 0))
  k_tile = pl.BlockSpec((sq, sq, c.block_k, dp), lambda b, h, j: (b, h, j, 0))

  def grouped(x):  # [B, H, lq, d] -> [B, K, G, lq, d]
    return x.reshape(B, K, G, lq, x.shape[-1])

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, c=c, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(B, K, lk // c.block_k),
      in_specs=[heads, k_tile, k_tile, heads, heads_col, heads_col] + (
          _seg_specs(c, lq, lk, True) if has_seg else []),
      out_specs=(k_tile, k_tile), compiler_params=_params(dp), interpret=c.interpret,
      name="flash_attention_dkv",
  )(grouped(q), k, v, grouped(do), grouped(lse), grouped(delta), *segs)
  return dq, dk, dv
