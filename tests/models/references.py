"""Independent plain-jnp references shared by the model tests."""

import jax
import jax.numpy as jnp


def reference(q, k, v, scale, causal, mask=None):
  """softmax(scale q k^T + mask) v on [B, L, H, D] with k/v heads repeated (GQA)."""
  H, K = q.shape[2], k.shape[2]
  k, v = jnp.repeat(k, H // K, axis=2), jnp.repeat(v, H // K, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
  L, S = q.shape[1], k.shape[1]
  allowed = jnp.ones((1, 1, L, S), bool)
  if causal:
    allowed &= jnp.arange(S)[None, :] <= jnp.arange(L)[:, None] + S - L
  if mask is not None:
    allowed &= mask
  logits = jnp.where(allowed, logits, -jnp.inf)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
