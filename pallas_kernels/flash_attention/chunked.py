"""Memory-efficient attention in plain XLA: FlashAttention's tiling (Dao et al. 2022) with the
FlashAttention-2 backward (Dao 2023), written with lax loops instead of a kernel.

Forward: a lax.map over query blocks, each running an online softmax (running max m, running sum
l, unnormalised accumulator) over the key blocks it can see; key blocks that causal/window masking
hides entirely are skipped (dynamic loop bounds), and the per-row logsumexp is saved. Backward
(custom_vjp): a scan over key blocks whose inner loop recomputes each block's probabilities from
the saved logsumexp, P = exp(S - lse), and accumulates
  dV += P^T dO,  dS = P * (dO V^T - rowsum(dO * O)),  dQ += dS K,  dK += dS^T Q
(times the scale and the soft-cap derivative 1 - tanh^2). Peak memory is one [block_q, block_k]
tile per (batch, kv head) plus O(seq) residuals, in the backward too; nothing [L, L]-sized.

Any sequence length: inputs are zero-padded to whole blocks and padding keys are masked.
Grouped-query attention folds the heads sharing a kv head into the query rows ([B, K, G*bq, D])
so every block product is a plain batched matmul. The block helpers below (`logits`,
`online_softmax_step`, `finish`, `dlogits`, block ranges) are shared with the Pallas kernels.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._tiling import cdiv
from pallas_kernels.flash_attention.reference import visible

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one blocked attention call (hashable: a custom_vjp nondiff arg)."""
  causal: bool
  window: int | None
  softcap: float | None
  scale: float
  q_len: int  # true (unpadded) lengths
  k_len: int
  block_q: int
  block_k: int

  @property
  def offset(self) -> int:
    """Absolute position of query 0 (bottom-right alignment of queries against keys)."""
    return self.k_len - self.q_len

  @property
  def key_padding(self) -> bool:
    return self.k_len % self.block_k != 0


def _div(x, d: int):
  """x // d for x >= 0, as a Python int or a traced int32 (lax.div truncates: fine for x >= 0)."""
  return x // d if isinstance(x, int) else lax.div(x, jnp.asarray(d, x.dtype))


def _max(a, b):
  return max(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.maximum(a, b)


def _min(a, b):
  return min(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.minimum(a, b)


def key_block_range(i, c: Config, num_k_blocks: int):
  """Key blocks [lo, hi) that can hold a key visible to some query of query block i; every block
  outside is fully masked by causality or the window and is skipped."""
  lo, hi = 0, num_k_blocks
  first_q = i * c.block_q + c.offset
  last_q = first_q + c.block_q - 1
  if c.causal:
    hi = _min(hi, _div(_max(last_q + 1 + c.block_k - 1, 0), c.block_k))
  if c.window is not None:
    lo = _div(_max(first_q - c.window + 1, 0), c.block_k)
    if not c.causal:
      hi = _min(hi, _div(_max(last_q + c.window + c.block_k - 1, 0), c.block_k))
  return lo, hi


def query_block_range(j, c: Config, num_q_blocks: int):
  """Query blocks [lo, hi) that can see some key of key block j (the transpose of
  key_block_range)."""
  lo, hi = 0, num_q_blocks
  first_k = j * c.block_k
  last_k = first_k + c.block_k - 1
  if c.causal:
    lo = _div(_max(first_k - c.offset, 0), c.block_q)
  if c.window is not None:
    hi = _min(hi, _div(_max(last_k + c.window - c.offset + c.block_q - 1, 0), c.block_q))
    if not c.causal:
      lo = _div(_max(first_k - c.window + 1 - c.offset, 0), c.block_q)
  return lo, hi


def matmul(a, b, contract_a: int, contract_b: int):
  """f32-accumulated product of the last two axes (leading axes are batch axes): contract
  a's axis `contract_a` (0 or 1 of the trailing pair) with b's `contract_b`."""
  nb = a.ndim - 2
  batch = tuple(range(nb))
  dims = (((nb + contract_a,), (nb + contract_b,)), (batch, batch))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def logits(q, k, c: Config):
  """Block logits S = softcap(scale * q k^T) in f32, and tanh(.) for the backward (or None)."""
  s = matmul(q, k, 1, 1) * c.scale
  if c.softcap is None:
    return s, None
  t = jnp.tanh(s / c.softcap)
  return c.softcap * t, t


def online_softmax_step(carry, s, mask, v):
  """One key block of the online softmax: rescale the running (max m, sum l, acc) to the new max.

  Masked logits become -inf; a row with nothing visible yet keeps m = -inf and adds exactly 0
  (the max is replaced by 0 before subtracting, so no inf - inf)."""
  m, l, acc = carry
  s = jnp.where(mask, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
  m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  p = jnp.exp(s - m_safe)
  alpha = jnp.exp(m - m_safe)
  l = alpha * l + jnp.sum(p, axis=-1, keepdims=True)
  acc = alpha * acc + matmul(p.astype(v.dtype), v, 1, 0)
  return m_new, l, acc


def init_carry(rows_shape, head_dim):
  m = jnp.full(rows_shape + (1,), -jnp.inf, jnp.float32)
  return m, jnp.zeros(rows_shape + (1,), jnp.float32), jnp.zeros(rows_shape + (head_dim,),
                                                                 jnp.float32)


def finish(m, l, acc):
  """Output acc / l and logsumexp m + log l. Fully masked rows (l = 0): output 0, lse 0 (any
  finite value works: their logits are -inf, so exp(S - lse) = 0 in the backward)."""
  l_safe = jnp.where(l == 0.0, 1.0, l)
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  return acc / l_safe, m_safe + jnp.log(l_safe)


def probs(s, mask, lse):
  """Recomputed block probabilities P = exp(S - lse), exactly 0 where masked."""
  return jnp.exp(jnp.where(mask, s, -jnp.inf) - lse)


def dlogits(p, dp, delta, t, c: Config):
  """dL/d(q.k) for one block: P * (dP - delta), through the soft-cap and the scale."""
  ds = p * (dp - delta)
  if t is not None:
    ds = ds * (1.0 - t * t)
  return ds * c.scale


def _positions(i, c: Config, groups: int):
  """Absolute query positions of query block i with the G heads folded into rows: [G*bq, 1]."""
  r = jnp.tile(jnp.arange(c.block_q), groups)
  return (i * c.block_q + c.offset + r)[:, None]


def _mask(i, j, qsb, ksb, c: Config, groups: int):
  q_seg = k_seg = None
  if qsb is not None:
    q_seg = jnp.tile(qsb[i], (1, groups))[:, None, :, None]  # [B, 1, G*bq, 1]
    k_seg = ksb[j][:, None, None, :]  # [B, 1, 1, bk]
  k_pos = (j * c.block_k + jnp.arange(c.block_k))[None, :]
  return visible(_positions(i, c, groups), k_pos, causal=c.causal, window=c.window, q_seg=q_seg,
                 k_seg=k_seg, k_len=c.k_len if c.key_padding else None)


def _forward(c: Config, qb, kb, vb, qsb, ksb):
  """qb [nq, B, K, G*bq, D]; kb, vb [nk, B, K, bk, D]; qsb [nq, B, bq], ksb [nk, B, bk] or None.
  Returns o like qb and lse [nq, B, K, G*bq, 1] (f32)."""
  nk = kb.shape[0]
  groups = qb.shape[3] // c.block_q

  def one_query_block(i):
    q_i = qb[i]

    def body(j, carry):
      s, _ = logits(q_i, kb[j], c)
      return online_softmax_step(carry, s, _mask(i, j, qsb, ksb, c, groups), vb[j])

    lo, hi = key_block_range(i, c, nk)
    o, lse = finish(*lax.fori_loop(lo, hi, body, init_carry(q_i.shape[:-1], q_i.shape[-1])))
    return o.astype(qb.dtype), lse

  return lax.map(one_query_block, jnp.arange(qb.shape[0]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked(c, qb, kb, vb, qsb, ksb):
  return _forward(c, qb, kb, vb, qsb, ksb)[0]


def _blocked_fwd(c, qb, kb, vb, qsb, ksb):
  o, lse = _forward(c, qb, kb, vb, qsb, ksb)
  return o, (qb, kb, vb, qsb, ksb, o, lse)


def _blocked_bwd(c, res, do):
  """One pass: scan over key blocks (carrying dq for all queries), inner loop over the query
  blocks that can see the key block, accumulating this block's dk, dv."""
  qb, kb, vb, qsb, ksb, o, lse = res
  nq = qb.shape[0]
  groups = qb.shape[3] // c.block_q
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

  def one_key_block(dq, j):
    k_j, v_j = kb[j], vb[j]

    def body(i, carry):
      dq, dk, dv = carry
      q_i, do_i = qb[i], do[i]
      s, t = logits(q_i, k_j, c)
      p = probs(s, _mask(i, j, qsb, ksb, c, groups), lse[i])
      dv = dv + matmul(p.astype(do_i.dtype), do_i, 0, 0)
      ds = dlogits(p, matmul(do_i, v_j, 1, 1), delta[i], t, c)
      dk = dk + matmul(ds.astype(q_i.dtype), q_i, 0, 0)
      dq_i = dq[i] + matmul(ds.astype(k_j.dtype), k_j, 1, 0)
      return lax.dynamic_update_index_in_dim(dq, dq_i, i, 0), dk, dv

    lo, hi = query_block_range(j, c, nq)
    zeros = jnp.zeros(k_j.shape, jnp.float32)
    dq, dk, dv = lax.fori_loop(lo, hi, body, (dq, zeros, zeros))
    return dq, (dk.astype(kb.dtype), dv.astype(vb.dtype))

  dq, (dk, dv) = lax.scan(one_key_block, jnp.zeros(qb.shape, jnp.float32),
                          jnp.arange(kb.shape[0]))
  return dq.astype(qb.dtype), dk, dv, None, None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def _pad_axis(x, axis: int, size: int):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def attention(q, k, v, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None,
              window: int | None = None, softcap: float | None = None,
              scale: float | None = None, block_q: int | None = None,
              block_k: int | None = None) -> jax.Array:
  """Blocked attention with O(seq) memory in forward and backward; same conventions and
  arguments as reference.attention. Blocks default to 512 (clipped to the sequence lengths);
  any positive block size works on any backend (XLA pads and tiles internally)."""
  B, Lq, H, D = q.shape
  Lk, K = k.shape[1], k.shape[2]
  G = H // K
  bq = min(block_q or DEFAULT_BLOCK_Q, Lq)
  bk = min(block_k or DEFAULT_BLOCK_K, Lk)
  nq, nk = cdiv(Lq, bq), cdiv(Lk, bk)
  c = Config(causal=causal, window=window, softcap=softcap,
             scale=D ** -0.5 if scale is None else float(scale), q_len=Lq, k_len=Lk,
             block_q=bq, block_k=bk)

  qb = _pad_axis(q, 1, nq * bq).reshape(B, nq, bq, K, G, D)
  qb = qb.transpose(1, 0, 3, 4, 2, 5).reshape(nq, B, K, G * bq, D)

  def kv_blocks(x):
    return _pad_axis(x, 1, nk * bk).reshape(B, nk, bk, K, D).transpose(1, 0, 3, 2, 4)

  qsb = ksb = None
  if q_segment_ids is not None:
    qsb = _pad_axis(q_segment_ids, 1, nq * bq).reshape(B, nq, bq).transpose(1, 0, 2)
    ksb = _pad_axis(kv_segment_ids, 1, nk * bk).reshape(B, nk, bk).transpose(1, 0, 2)
  ob = _blocked(c, qb, kv_blocks(k), kv_blocks(v), qsb, ksb)
  o = ob.reshape(nq, B, K, G, bq, D).transpose(1, 0, 4, 2, 3, 5).reshape(B, nq * bq, H, D)
  return o[:, :Lq]
