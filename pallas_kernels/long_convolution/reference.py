"""Long (global) causal convolution in plain XLA, direct O(L^2): the reference every path in this
folder is tested against, and the "xla" implementation.

Convention shared by every implementation in this folder (the long convolutions of S4 / H3 /
Hyena / SGConv):
  u [B, L, C], k [L_k, C] with L_k <= L (usually L_k = L: kernel length = sequence length),
    y[b, t, c] = sum_{s <= t, s < L_k} k[s, c] u[b, t - s, c]
  per channel, computed in float32 and returned in u's dtype (float32 or bfloat16 inputs).
"""

import jax
import jax.numpy as jnp
from jax import lax


def long_conv(u, k) -> jax.Array:
  """Causal depthwise convolution of u [B, L, C] with k [L_k, C] (L_k <= L): a grouped
  lax.conv_general_dilated with the kernel flipped and L_k - 1 zeros of left padding (O(B L L_k C)
  work, O(B L C) memory). Arguments are assumed valid (api.py checks them)."""
  C = u.shape[-1]
  kernel = jnp.flip(k.astype(jnp.float32), 0)[:, None, :]  # "WIO" with I = 1
  y = lax.conv_general_dilated(
      u.astype(jnp.float32), kernel, window_strides=(1,), padding=[(k.shape[0] - 1, 0)],
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=C,
      precision=lax.Precision.HIGHEST)
  return y.astype(u.dtype)
