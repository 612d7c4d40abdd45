"""FlashAttention (Dao et al. 2022) as Pallas kernels, with the FlashAttention-2 backward (Dao
2023): a forward kernel that also writes the logsumexp, a dQ kernel and a dK/dV kernel, tied
together by jax.custom_vjp (pallas_call has no reverse-mode rule).

Kernels (arrays in [batch, heads, seq, head_dim] layout inside; S = softcap(scale q k^T)):
  * forward, grid (batch, heads, query blocks): the query tile stays on chip while an inner
    fori_loop walks the key blocks with an online softmax; key blocks that causality or the
    window hide from the whole query tile are skipped (dynamic loop bounds); writes O and
    lse = max + log(sum exp).
  * dQ, grid (batch, heads, query blocks): recomputes P = exp(S - lse) per key block and
    accumulates dQ += dS K with dS = P * (dO V^T - rowsum(dO * O)) (the rowsum is one XLA
    reduction before the kernels).
  * dK/dV, grid (batch, kv_heads, key blocks): loops over the query heads sharing the kv head
    (grouped-query attention needs no atomics or extra reduction) and the query blocks that can
    see the key tile, accumulating dV += P^T dO and dK += dS^T Q.
All accumulation is in f32 (bf16 inputs feed the matmuls directly). The block maths (online
softmax step, masks, block ranges) is shared with chunked.py, the XLA version of the same
algorithm.

Hardware layout assumptions (only interpret mode was run while writing this; compiled lowering
on real GPUs/TPUs is untested):
  * TPU (Mosaic): tiles are (block, head_dim) with block_q and block_k multiples of 8 (sublanes);
    multiples of 128 are the efficient choice; head_dim is zero-padded to a multiple of 128
    (lanes). K/V of one kv head (forward, dQ) and Q/dO of one kv head's query heads (dK/dV)
    are whole-sequence blocks kept in VMEM: calls whose footprint exceeds VMEM_BUDGET_BYTES are
    refused (api.py then falls back to the XLA chunked path). logsumexp, rowsum(dO*O) and query
    segment ids are [seq, 1] columns, kv segment ids a [1, seq] row, so masks broadcast without
    relayouts.
  * GPU (Triton): block sizes powers of two >= 16, head_dim zero-padded to a power of two
    (at most 256).
  * interpret mode: block sizes multiples of 8, head_dim zero-padded to a multiple of 8.
Zero-padding head_dim is exact (padded columns add 0 to q.k and produce 0 outputs); padded
sequence positions are masked keys or discarded query rows.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._tiling import next_pow2, round_up, target
from pallas_kernels.flash_attention import chunked
from pallas_kernels.flash_attention.reference import visible

DEFAULT_BLOCK = 128
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM, leaving room for tiles
MAX_GPU_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class Config(chunked.Config):
  groups: int = 1  # query heads per kv head
  interpret: bool = False


def padded_head_dim(head_dim: int, interpret: bool) -> int:
  t = target(interpret)
  if t == "tpu":
    return round_up(head_dim, 128)
  if t == "gpu":
    return max(16, next_pow2(head_dim))
  return round_up(head_dim, 8)


def block_size_error(name: str, value: int, interpret: bool) -> str | None:
  """Why `value` is not a valid block size on this target, or None if it is."""
  if target(interpret) == "gpu":
    if value < 16 or value != next_pow2(value):
      return f"{name}={value}: Pallas on GPU needs a power of two >= 16"
  elif value % 8:
    return f"{name}={value}: Pallas needs a multiple of 8 (TPU sublanes)"
  return None


def default_block(seq_len: int, interpret: bool) -> int:
  """DEFAULT_BLOCK, shrunk for short sequences to the smallest valid size covering them."""
  if target(interpret) == "gpu":
    return min(DEFAULT_BLOCK, max(16, next_pow2(seq_len)))
  return min(DEFAULT_BLOCK, round_up(seq_len, 8))


def unsupported_reason(q_shape, k_shape, dtype, *, interpret: bool, block_q: int | None = None,
                       block_k: int | None = None) -> str | None:
  """Why this call cannot run as Pallas kernels here (None if it can). Validation of the
  arguments themselves is api.py's job; this covers only the kernels' hardware limits."""
  t = target(interpret)
  if t == "interpret":
    return None
  if t not in ("gpu", "tpu"):
    return f"compiled Pallas kernels need a GPU or TPU; the default backend is {t}"
  _, Lq, H, D = q_shape
  Lk, K = k_shape[1], k_shape[2]
  Dp = padded_head_dim(D, interpret)
  if t == "gpu" and Dp > MAX_GPU_HEAD_DIM:
    return f"head_dim {D} (padded {Dp}) exceeds {MAX_GPU_HEAD_DIM} for the GPU kernels"
  if t == "tpu":
    bq = block_q or default_block(Lq, interpret)
    bk = block_k or default_block(Lk, interpret)
    lq, lk = round_up(Lq, bq), round_up(Lk, bk)
    item = jnp.dtype(dtype).itemsize
    # double-buffered whole-sequence blocks; [seq, 1] f32 columns occupy 128 lanes each
    fwd = 2 * 2 * lk * Dp * item
    dkv = 2 * (2 * (H // K) * lq * Dp * item + 2 * (H // K) * lq * 128 * 4 + lq * 128 * 4)
    need = max(fwd, dkv)
    if need > VMEM_BUDGET_BYTES:
      return (f"the whole-sequence VMEM blocks need ~{need / 2**20:.1f} MiB "
              f"(> {VMEM_BUDGET_BYTES / 2**20:.0f} MiB budget) for q_len {Lq}, kv_len {Lk}")
  return None


def _mask(c: Config, i, j, qs_ref, ks_ref, k_slice):
  """Visibility of key block j to query block i as a [block_q, block_k] boolean tile."""
  shape = (c.block_q, c.block_k)
  q_pos = i * c.block_q + c.offset + lax.broadcasted_iota(jnp.int32, shape, 0)
  k_pos = j * c.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
  q_seg = k_seg = None
  if qs_ref is not None:
    q_seg = qs_ref[...]  # [bq, 1]
    k_seg = ks_ref[:, k_slice] if k_slice is not None else ks_ref[...]  # [1, bk]
  return visible(q_pos, k_pos, causal=c.causal, window=c.window, q_seg=q_seg, k_seg=k_seg,
                 k_len=c.k_len if c.key_padding else None)


def _split(refs, n_in, has_seg):
  """(inputs, qs_ref, ks_ref, outputs) from a kernel's flat ref list."""
  ins, rest = refs[:n_in], refs[n_in:]
  if has_seg:
    return ins, rest[0], rest[1], rest[2:]
  return ins, None, None, rest


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
  o, lse = chunked.finish(*lax.fori_loop(lo, hi, body, chunked.init_carry((c.block_q,),
                                                                          q.shape[-1])))
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


def _forward(c: Config, q, k, v, qs, ks):
  B, H, lq, dp = q.shape
  lk = k.shape[2]
  has_seg = qs is not None
  q_tile, col, kv = _query_tiled_specs(c, lk, dp)
  in_specs = [q_tile, kv, kv] + (_seg_specs(c, lq, lk, False) if has_seg else [])
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, c=c, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, H, lq, 1), jnp.float32)),
      grid=(B, H, lq // c.block_q), in_specs=in_specs, out_specs=(q_tile, col),
      interpret=c.interpret, name="flash_attention_fwd",
  )(q, k, v, *((qs, ks) if has_seg else ()))
  return o, lse


def _backward(c: Config, q, k, v, qs, ks, o, lse, do):
  B, H, lq, dp = q.shape
  K, lk = k.shape[1], k.shape[2]
  G = c.groups
  has_seg = qs is not None
  segs = (qs, ks) if has_seg else ()
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

  q_tile, col, kv = _query_tiled_specs(c, lk, dp)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, c=c, has_seg=has_seg),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(B, H, lq // c.block_q),
      in_specs=[q_tile, kv, kv, q_tile, col, col] + (_seg_specs(c, lq, lk, False) if has_seg
                                                      else []),
      out_specs=q_tile, interpret=c.interpret, name="flash_attention_dq",
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
      out_specs=(k_tile, k_tile), interpret=c.interpret, name="flash_attention_dkv",
  )(grouped(q), k, v, grouped(do), grouped(lse), grouped(delta), *segs)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(c, q, k, v, qs, ks):
  return _forward(c, q, k, v, qs, ks)[0]


def _flash_fwd(c, q, k, v, qs, ks):
  o, lse = _forward(c, q, k, v, qs, ks)
  return o, (q, k, v, qs, ks, o, lse)


def _flash_bwd(c, res, do):
  q, k, v, qs, ks, o, lse = res
  return (*_backward(c, q, k, v, qs, ks, o, lse, do), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def attention(q, k, v, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None,
              window: int | None = None, softcap: float | None = None,
              scale: float | None = None, block_q: int | None = None,
              block_k: int | None = None, interpret: bool = False) -> jax.Array:
  """FlashAttention with Pallas kernels; same conventions and arguments as
  reference.attention, plus block sizes (default 128, shrunk for short sequences; see the
  module docstring for the valid values per target) and `interpret` (run the kernels in the
  Pallas interpreter: any backend, how the tests run them on CPU)."""
  B, Lq, H, D = q.shape
  Lk, K = k.shape[1], k.shape[2]
  bq = block_q or default_block(Lq, interpret)
  bk = block_k or default_block(Lk, interpret)
  lq, lk = round_up(Lq, bq), round_up(Lk, bk)
  dp = padded_head_dim(D, interpret)
  c = Config(causal=causal, window=window, softcap=softcap,
             scale=D ** -0.5 if scale is None else float(scale), q_len=Lq, k_len=Lk,
             block_q=bq, block_k=bk, groups=H // K, interpret=interpret)

  def prep(x, length):  # [B, L, h, D] -> zero-padded [B, h, length, dp]
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, dp - D)))
    return x.transpose(0, 2, 1, 3)

  qs = ks = None
  if q_segment_ids is not None:
    qs = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, lq - Lq)))[:, :, None]
    ks = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, lk - Lk)))[:, None, :]
  o = _flash(c, prep(q, lq), prep(k, lk), prep(v, lk), qs, ks)
  return o.transpose(0, 2, 1, 3)[:, :Lq, :, :D]
