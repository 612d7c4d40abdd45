"""Softmax attention core (Vaswani et al. 2017, eq. 1) in plain XLA with a hand-written VJP.

Layout in: [batch, seq, heads, head_dim] (as jax.nn.dot_product_attention). Internally heads are
moved ahead of the sequence ([B, K, G*L, D] with G query heads per kv head), so every einsum is a
plain batched matmul; the backward pass is the standard softmax-attention gradient
  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K,  dK = dS^T Q,
computed from the saved probabilities. On XLA:CPU this layout plus explicit VJP runs the
4-head, 256-token case about 1.7x faster (fwd+bwd) than autodiff of the [B,L,H,D] einsums, and
skipping the masked upper-right block of causal attention saves another ~25%.
The Pallas kernels issue replaces this with a blocked kernel behind the same signature.
"""

import jax
import jax.numpy as jnp

MASKED = -1e30  # additive bias of masked logits: exp underflows to exactly 0, no inf - inf


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


def dot_product_attention(q_BLHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array, *,
                          scale: float, causal: bool, mask: jax.Array | None = None) -> jax.Array:
  """softmax(scale * q k^T + mask) v.

  q [batch, q_len, heads, head_dim]; k, v [batch, kv_len, kv_heads, head_dim] with heads a
  multiple of kv_heads (grouped-query attention when smaller). `mask`: boolean, True = attend,
  broadcastable to [batch, heads, q_len, kv_len]. `causal`: query i (aligned to the end of the
  keys, so q_len < kv_len means the last positions) attends to keys <= i. Softmax in f32.
  """
  B, L, H, D = q_BLHD.shape
  S, K = k_BSKD.shape[1], k_BSKD.shape[2]
  if H % K:
    raise ValueError(f"heads {H} not a multiple of kv_heads {K}")
  G = H // K
  q = (q_BLHD * jnp.asarray(scale, q_BLHD.dtype)).reshape(B, L, K, G, D).transpose(0, 2, 3, 1, 4)
  k = k_BSKD.transpose(0, 2, 1, 3)
  v = v_BSKD.transpose(0, 2, 1, 3)
  if causal and mask is None and L == S and L % 2 == 0 and L >= CAUSAL_SPLIT_MIN_LEN:
    o = _causal_halves(q, k, v)
  else:
    o = _attend(q.reshape(B, K, G * L, D), k, v, _bias(B, L, S, K, G, causal, mask))
  return o.reshape(B, K, G, L, D).transpose(0, 3, 1, 2, 4).reshape(B, L, H, D)


CAUSAL_SPLIT_MIN_LEN = 128  # below this the two half-size matmuls cost more than they save


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


def _bias(B, L, S, K, G, causal, mask) -> jax.Array:
  """Additive f32 bias broadcastable to [B, K, G*L, S]: 0 where attended, MASKED elsewhere."""
  keep = jnp.ones((1, 1, 1, L, S), jnp.bool_)
  if causal:
    keep = jnp.tril(jnp.ones((L, S), jnp.bool_), k=S - L)[None, None, None]
  if mask is not None:
    mask = jnp.asarray(mask, jnp.bool_)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    mB, mH, mL, mS = mask.shape
    if mH not in (1, K * G):
      raise ValueError(f"mask heads axis {mH} must be 1 or {K * G}")
    mask = mask.reshape(mB, K, G, mL, mS) if mH == K * G else mask.reshape(mB, 1, 1, mL, mS)
    keep = jnp.logical_and(keep, mask)
  keep = jnp.broadcast_to(keep, keep.shape[:2] + (G, L, S))
  bias = jnp.where(keep, 0.0, MASKED).astype(jnp.float32)
  return bias.reshape(bias.shape[0], bias.shape[1], G * L, S)
