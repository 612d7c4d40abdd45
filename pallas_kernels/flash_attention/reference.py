"""Plain-XLA softmax attention (Vaswani et al. 2017, eq. 1): the reference every kernel is tested
against. It materialises the [batch, heads, q_len, kv_len] logits, so memory is quadratic in the
sequence length; use it for correctness, not for long sequences.

Conventions shared by every implementation in this folder (`visible` is their single definition):
  * layout [batch, seq, heads, head_dim]; k and v may have fewer heads (grouped-query attention,
    heads % kv_heads == 0, query head h reads kv head h // (heads // kv_heads), as
    jax.nn.dot_product_attention);
  * logits = scale * q.k (scale defaults to 1/sqrt(head_dim)), then softcap * tanh(logits /
    softcap) when `softcap` is given (Gemma 2 style logit soft-capping);
  * query i sits at absolute position i + kv_len - q_len (bottom-right alignment, so with
    q_len < kv_len the queries are the last positions; with q_len == kv_len it is simply i);
  * causal: query at position i sees keys j <= i;
  * window w: causal -> i - w < j <= i (w keys including itself); non-causal -> |i - j| < w;
  * segment ids (packed sequences): a query sees only keys with the same segment id;
  * a query that sees no key at all (a fully masked row) gets output 0 and zero gradients.
"""

import jax
import jax.numpy as jnp
from jax import lax


def visible(q_pos, k_pos, *, causal: bool, window: int | None, q_seg=None, k_seg=None,
            k_len: int | None = None):
  """Boolean mask, True where the query at `q_pos` may attend to the key at `k_pos`.

  Arguments broadcast against each other (e.g. q_pos [m, 1], k_pos [1, n]); `k_len` masks the
  padding keys at positions >= k_len. Works on traced values, inside Pallas kernels too.
  """
  keep = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if k_len is not None:
    keep = both(keep, k_pos < k_len)
  if causal:
    keep = both(keep, k_pos <= q_pos)
  if window is not None:
    d = q_pos - k_pos
    keep = both(keep, d < window if causal else jnp.abs(d) < window)
  if q_seg is not None:
    keep = both(keep, q_seg == k_seg)
  if keep is None:
    keep = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_pos), jnp.shape(k_pos)), jnp.bool_)
  return keep


def attention(q, k, v, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None,
              window: int | None = None, softcap: float | None = None,
              scale: float | None = None) -> jax.Array:
  """softmax(mask(softcap(scale * q k^T))) v in f32, returned in q's dtype.

  q [B, Lq, H, D]; k, v [B, Lk, K, D] with H % K == 0; segment ids int [B, Lq] and [B, Lk]
  (both or neither). Arguments are assumed valid (pallas_kernels.flash_attention checks them).
  Differentiable by plain autodiff.
  """
  B, Lq, H, D = q.shape
  Lk, K = k.shape[1], k.shape[2]
  G = H // K
  scale = D ** -0.5 if scale is None else scale
  hi = lax.Precision.HIGHEST
  qf = q.astype(jnp.float32).reshape(B, Lq, K, G, D)
  s = jnp.einsum("bqkgd,bskd->bkgqs", qf, k.astype(jnp.float32), precision=hi) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  q_pos = (jnp.arange(Lq) + (Lk - Lq))[:, None]
  k_pos = jnp.arange(Lk)[None, :]
  q_seg = k_seg = None
  if q_segment_ids is not None:
    q_seg = q_segment_ids[:, None, None, :, None]
    k_seg = kv_segment_ids[:, None, None, None, :]
  mask = visible(q_pos, k_pos, causal=causal, window=window, q_seg=q_seg, k_seg=k_seg)
  s = jnp.where(mask, s, -jnp.inf)
  m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  m = jnp.where(jnp.isneginf(m), 0.0, m)  # fully masked row: exp(-inf - 0) = 0, no inf - inf
  e = jnp.exp(s - m)
  l = jnp.sum(e, axis=-1, keepdims=True)
  p = e / jnp.where(l == 0.0, 1.0, l)
  o = jnp.einsum("bkgqs,bskd->bqkgd", p, v.astype(jnp.float32), precision=hi)
  return o.reshape(B, Lq, H, D).astype(q.dtype)
