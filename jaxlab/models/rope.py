"""Rotary position embedding (RoPE; Su et al. 2021, RoFormer, eq. 34), "rotate-half" layout.

Feature pairs (i, i + D/2) of each head are rotated by angle pos * base^(-2i/D), so that
<rope(q, m), rope(k, n)> depends on m - n only.

Positions given as a NumPy array (Attention's default 0..L-1) make the sine / cosine tables
constants of the program, computed once in float64 when it is traced. From traced positions the
program computes them itself, and XLA fuses that computation into every rotation that reads
them: on the CPU each element of q and k then evaluates its own sine and cosine, which made the
bench LM step 7% slower (docs/results/cpu_speed.md).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _check_head_dim(head_dim: int) -> None:
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")


def rope_angles(positions: jax.Array, head_dim: int, base: float = 10000.0) -> jax.Array:
  """Angles [..., head_dim // 2] = positions[..., None] * base^(-2i / head_dim)."""
  _check_head_dim(head_dim)
  inv_freq_F = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  return positions.astype(jnp.float32)[..., None] * inv_freq_F


def rope_tables(positions: np.ndarray, head_dim: int, base: float = 10000.0):
  """(sin, cos) [..., head_dim // 2] of rope_angles as float32 NumPy arrays, computed in float64."""
  _check_head_dim(head_dim)
  inv_freq_F = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  angles = np.asarray(positions, np.float64)[..., None] * inv_freq_F
  return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def apply_rope(x_BLHD: jax.Array, positions: jax.Array | np.ndarray,
               base: float = 10000.0) -> jax.Array:
  """Rotates queries or keys [batch, seq, heads, head_dim]; positions is [seq] or [batch, seq],
  a NumPy array (constant tables, module docstring) or a jax.Array."""
  if isinstance(positions, np.ndarray):
    sin, cos = rope_tables(positions, x_BLHD.shape[-1], base)
    return _rotate(x_BLHD, jnp.asarray(sin[..., None, :]), jnp.asarray(cos[..., None, :]))
  angles = rope_angles(positions, x_BLHD.shape[-1], base)[..., None, :]  # [(B,) L, 1, D/2]
  return _rotate(x_BLHD, jnp.sin(angles), jnp.cos(angles))


@jax.custom_vjp
def _rotate(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotates each feature pair (i, i + D/2) by the angle whose sine/cosine are given (in f32)."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _rotate_fwd(x, sin, cos):
  return _rotate(x, sin, cos), (sin, cos)


def _rotate_bwd(res, g):
  """A rotation's transpose is the rotation by the opposite angle (no autodiff slicing/padding)."""
  sin, cos = res
  return _rotate(g, -sin, cos), jnp.zeros_like(sin), jnp.zeros_like(cos)


_rotate.defvjp(_rotate_fwd, _rotate_bwd)
