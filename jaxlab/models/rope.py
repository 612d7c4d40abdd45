"""Rotary position embedding (RoPE; Su et al. 2021, RoFormer, eq. 34), "rotate-half" layout.

Feature pairs (i, i + D/2) of each head are rotated by angle pos * base^(-2i/D), so that
<rope(q, m), rope(k, n)> depends on m - n only.
"""

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, head_dim: int, base: float = 10000.0) -> jax.Array:
  """Angles [..., head_dim // 2] = positions[..., None] * base^(-2i / head_dim)."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
  inv_freq_F = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions.astype(jnp.float32)[..., None] * inv_freq_F


def apply_rope(x_BLHD: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotates queries or keys [batch, seq, heads, head_dim]; positions is [seq] or [batch, seq]."""
  half = x_BLHD.shape[-1] // 2
  angles = rope_angles(positions, x_BLHD.shape[-1], base)[..., None, :]  # [(B,) L, 1, D/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x = x_BLHD.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHD.dtype)
