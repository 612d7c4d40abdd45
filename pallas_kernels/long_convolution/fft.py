"""Long causal convolution by FFT in O(L log L) (the FFT convolution of S4, Gu et al. 2022, and
Hyena, Poli et al. 2023): zero-pad u and k to 2L so that the circular convolution of the
transforms equals the linear one on the first L outputs, y = irfft(rfft(u) * rfft(k))[:L].

Float32 throughout (bf16 inputs are upcast; output in u's dtype). Gradients come from JAX's
autodiff of rfft/irfft, which are themselves FFT correlations, so the backward is O(L log L)
too. The default on CPU and GPU; TPUs run FFTs slowly, hence the block-Toeplitz Pallas path.
"""

import jax
import jax.numpy as jnp


def long_conv(u, k) -> jax.Array:
  """y[b, t, c] = sum_{s <= t} k[s, c] u[b, t - s, c]; u [B, L, C], k [L_k, C] with L_k <= L
  (conventions of reference.py). Arguments are assumed valid (api.py checks them)."""
  L = u.shape[1]
  n = 2 * L
  uf = jnp.fft.rfft(u.astype(jnp.float32), n=n, axis=1)
  kf = jnp.fft.rfft(k.astype(jnp.float32), n=n, axis=0)
  y = jnp.fft.irfft(uf * kf, n=n, axis=1)[:, :L]
  return y.astype(u.dtype)
