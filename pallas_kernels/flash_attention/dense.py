"""Dense softmax attention (Vaswani et al. 2017, eq. 1) in plain XLA with a hand-written VJP:
pallas_kernels.attention's "xla" path, the fastest one on CPU for short sequences whose
[B, H, Lq, Lk] logits fit in memory (the default there up to DENSE_MAX_LOGITS logits and below
DENSE_MAX_KV_LEN keys; beyond either, "xla_chunked").

Heads are moved ahead of the sequence ([B, K, G*L, D], G query heads per kv head) so every
einsum is a plain batched matmul; the backward pass is the standard softmax-attention gradient
  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K,  dK = dS^T Q,
computed from the saved probabilities. On XLA:CPU this layout plus the explicit VJP runs the
4-head, 256-token case about 1.7x faster (fwd+bwd) than autodiff of the [B,L,H,D] einsums, and
causal self-attention skips the fully masked upper-right block (two half-size products, ~25%
fewer FLOPs). Masks follow reference.visible; a query that sees no key gets output 0 and zero
gradients. No logit soft-capping (the dispatcher sends softcap to reference.py).
"""

import jax
import jax.numpy as jnp

from pallas_kernels.flash_attention.reference import visible

MASKED = -1e30  # additive bias of masked logits: exp underflows to exactly 0, no inf - inf
CAUSAL_SPLIT_MIN_LEN = 128  # below this the two half-size matmuls cost more than they save
DENSE_MAX_LOGITS = 2 ** 25  # batch*heads*q_len*kv_len up to which CPU defaults to this path
# ... and kv_len from which it does not: measured fwd+bwd (batch 1, 4 heads, causal) dense is
# 1.4x faster than chunked at 512 keys, chunked 1.2x faster at 1024 (docs/results/kernels.md).
DENSE_MAX_KV_LEN = 1024


@jax.custom_vjp
def _attend(q, k, v, bias):
  return _attend_fwd(q, k, v, bias)[0]


def _attend_fwd(q, k, v, bias):
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v)
  return o, (q, k, v, p, bias)


def _attend_bwd(res, do):
  q, k, v, p, bias = res
  dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(do.dtype), do)
  dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=jnp.float32)
  ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds.astype(k.dtype), k)
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(q.dtype), q)
  return dq, dk, dv, jnp.zeros_like(bias)


_attend.defvjp(_attend_fwd, _attend_bwd)


def attention(q, k, v, *, causal: bool = False, q_segment_ids=None, kv_segment_ids=None,
              window: int | None = None, scale: float | None = None,
              mask: jax.Array | None = None) -> jax.Array:
  """softmax(mask(scale * q k^T)) v; q [B, Lq, H, D], k, v [B, Lk, K, D] (H % K == 0).

  `mask`: optional boolean, True = attend, broadcastable to [B, H, Lq, Lk] (e.g. key padding
  [B, 1, 1, Lk]); combined with causal / window / segment ids. Softmax in f32. Arguments are
  assumed valid (pallas_kernels.flash_attention checks them).
  """
  B, L, H, D = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  scale = D ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(B, L, K, G, D).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  plain = q_segment_ids is None and window is None and mask is None
  if plain and causal and L == S and L % 2 == 0 and L >= CAUSAL_SPLIT_MIN_LEN:
    o = _causal_halves(q, k, v)
  else:
    keep = _keep(B, L, S, K, G, causal, window, q_segment_ids, kv_segment_ids, mask)
    bias = jnp.where(keep, 0.0, MASKED).astype(jnp.float32)
    o = _attend(q.reshape(B, K, G * L, D), k, v, bias.reshape(bias.shape[:2] + (G * L, S)))
    if not plain or L > S:  # rows that see no key: 0 instead of the mean of all values
      o = o * jnp.any(keep, axis=-1).reshape(keep.shape[:2] + (G * L, 1)).astype(o.dtype)
  return o.reshape(B, K, G, L, D).transpose(0, 3, 1, 2, 4).reshape(B, L, H, D)


def _causal_halves(q_BKGLD, k, v):
  """Causal self-attention with the fully masked upper-right block skipped: the first half of
  the queries attends to the first half of the keys only (25% fewer FLOPs, same result)."""
  B, K, G, L, D = q_BKGLD.shape
  c = L // 2
  outs = []
  for i in (0, 1):
    S = (i + 1) * c
    keep = jnp.arange(S)[None, :] <= (i * c + jnp.arange(c))[:, None]
    bias = jnp.tile(jnp.where(keep, 0.0, MASKED).astype(jnp.float32), (G, 1))[None, None]
    q_i = q_BKGLD[:, :, :, i * c:S].reshape(B, K, G * c, D)
    outs.append(_attend(q_i, k[:, :, :S], v[:, :, :S], bias).reshape(B, K, G, c, D))
  return jnp.concatenate(outs, axis=3).reshape(B, K, G * L, D)


def _keep(B, L, S, K, G, causal, window, q_seg, kv_seg, mask) -> jax.Array:
  """Boolean [b, k, G, L, S] (b in {1, B}, k in {1, K}): True where a query sees a key."""
  q_pos = (jnp.arange(L) + (S - L))[:, None]
  keep = visible(q_pos, jnp.arange(S)[None, :], causal=causal, window=window)[None, None, None]
  if q_seg is not None:
    keep = keep & (q_seg[:, None, None, :, None] == kv_seg[:, None, None, None, :])
  if mask is not None:
    mask = jnp.asarray(mask, jnp.bool_)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    mB, mH, mL, mS = mask.shape
    if mH not in (1, K * G):
      raise ValueError(f"mask heads axis {mH} must be 1 or {K * G}")
    keep = keep & (mask.reshape(mB, K, G, mL, mS) if mH > 1 else mask[:, :, None])
  return jnp.broadcast_to(keep, keep.shape[:2] + (G, L, S))
