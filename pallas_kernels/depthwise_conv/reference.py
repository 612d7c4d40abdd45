"""Depthwise convolutions in plain XLA (lax.conv_general_dilated with feature_group_count = C):
the reference every implementation in this folder is tested against.

Conventions shared by every implementation in this folder:
  * 1-D, x [B, L, C], w [K, C]. Tap order: w[k] multiplies the sample k steps in the past,
      causal=True:  y[t, c] = sum_{k<K} w[k, c] x[t - k, c]          (x[t < 0] = 0)
      causal=False: y[t, c] = sum_{k<K} w[k, c] x[t + K//2 - k, c]   (centred, zero padded)
    i.e. a true convolution (the kernel flipped relative to the cross-correlation of
    lax.conv_general_dilated / torch.nn.Conv1d: torch_weight[c, 0, j] = w[K - 1 - j, c]).
    Output length L either way.
  * 2-D, x [B, H, W, C], w [kh, kw, C], cross-correlation as lax.conv_general_dilated:
      y[h, v, c] = sum_{i<kh, j<kw} w[i, j, c] xp[h + i, v + j, c]
    where xp is x zero-padded by ((top, bottom), (left, right)); "SAME" pads
    ((kh-1)//2, kh//2) and ((kw-1)//2, kw//2), "VALID" pads nothing.
  * computation in float32, output in x's dtype (float32 or bfloat16 inputs).
"""

import jax
import jax.numpy as jnp
from jax import lax


def conv1d_pads(taps: int, causal: bool) -> tuple[int, int]:
  """(left, right) zero padding of the cross-correlation with the flipped kernel."""
  if causal:
    return taps - 1, 0
  return (taps - 1) // 2, taps // 2


def same_pads(size: int) -> tuple[int, int]:
  return (size - 1) // 2, size // 2


def depthwise_conv1d(x, w, *, causal: bool = True) -> jax.Array:
  """y[b, t, c] = sum_k w[k, c] x[b, t - k, c] (causal; module docstring for causal=False).
  x [B, L, C], w [K, C]; arguments are assumed valid (api.py checks them)."""
  C = x.shape[-1]
  kernel = jnp.flip(w.astype(jnp.float32), 0)[:, None, :]  # [K, 1, C]: "WIO" with I = 1
  y = lax.conv_general_dilated(
      x.astype(jnp.float32), kernel, window_strides=(1,), padding=[conv1d_pads(w.shape[0],
                                                                               causal)],
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=C,
      precision=lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def depthwise_conv2d(x, w, *, padding) -> jax.Array:
  """Depthwise 2-D cross-correlation. x [B, H, W, C], w [kh, kw, C], padding "SAME", "VALID"
  or ((top, bottom), (left, right)); arguments are assumed valid (api.py checks them)."""
  C = x.shape[-1]
  y = lax.conv_general_dilated(
      x.astype(jnp.float32), w.astype(jnp.float32)[:, :, None, :], window_strides=(1, 1),
      padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C,
      precision=lax.Precision.HIGHEST)
  return y.astype(x.dtype)
