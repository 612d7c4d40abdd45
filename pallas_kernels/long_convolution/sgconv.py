"""SGConv kernel parameterisation (Li et al. 2022, "What Makes Convolutional Models Great on Long
Sequence Modeling?"): a global convolution kernel with parameters sub-linear in its length and a
decaying structure, to feed `pallas_kernels.long_conv`.

Exact construction here (per channel c, kernel_dim d, decay alpha, length L):
  * S = number of scales, the smallest S >= 1 with d (2^S - 1) >= L;
  * parameters w_i [d, C] for i = 0 .. S-1 (S d C in all: O(d log(L / d)) per channel);
  * sub-kernel i is w_i linearly interpolated from d to n_i = d 2^i points and scaled by alpha^i:
      k_i[m] = alpha^i ((1 - f) w_i[floor(p)] + f w_i[floor(p) + 1]),  p = (m + 1/2) d / n_i - 1/2
    with p clamped to [0, d - 1] and f = p - floor(p) (half-pixel centres, as jax.image.resize
    "linear" when upsampling); sub-kernel 0 is w_0 itself;
  * k = concat(k_0, .., k_{S-1}) truncated to L (lengths d, 2d, 4d, ... so sub-kernel i covers
    lags [d (2^i - 1), d (2^{i+1} - 1)));
  * normalize=True (default): k[:, c] / ||k[:, c]||_2 (norm over time, differentiable, + 1e-6),
    so the kernel's scale does not grow with L or S.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def num_scales(length: int, kernel_dim: int) -> int:
  """Smallest S >= 1 with kernel_dim * (2**S - 1) >= length."""
  s = 1
  while kernel_dim * (2 ** s - 1) < length:
    s += 1
  return s


def interpolation_matrix(d: int, n: int) -> np.ndarray:
  """[n, d] matrix of half-pixel-centre linear interpolation from d to n points."""
  p = np.clip((np.arange(n) + 0.5) * d / n - 0.5, 0.0, d - 1)
  lo = np.floor(p).astype(int)
  hi = np.minimum(lo + 1, d - 1)
  f = p - lo
  m = np.zeros((n, d))
  np.add.at(m, (np.arange(n), lo), 1.0 - f)
  np.add.at(m, (np.arange(n), hi), f)
  return m


class SGConvKernel(nn.Module):
  """The SGConv kernel [length, channels] (construction in the module docstring).

  Attributes:
    length: kernel length L (normally the sequence length).
    channels: C, one kernel per channel (depthwise).
    kernel_dim: d, parameters per scale and channel.
    decay: alpha in (0, 1], the per-scale decay.
    normalize: divide each channel's kernel by its L2 norm.
    param_dtype: dtype of the parameters and of the returned kernel.

  Parameters: "kernel_0" .. "kernel_{S-1}", each [kernel_dim, channels], initialised N(0, 1).
  Example: `k = SGConvKernel(L, C).apply(params)`; `y = pallas_kernels.long_conv(u, k)`.
  """
  length: int
  channels: int
  kernel_dim: int = 32
  decay: float = 0.5
  normalize: bool = True
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    for name in ("length", "channels", "kernel_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SGConvKernel.{name} must be a positive int; got {value!r}")
    if not 0.0 < self.decay <= 1.0:
      raise ValueError(f"SGConvKernel.decay must lie in (0, 1]; got {self.decay!r}")
    d = self.kernel_dim
    parts = []
    for i in range(num_scales(self.length, d)):
      w = self.param(f"kernel_{i}", nn.initializers.normal(1.0), (d, self.channels),
                     self.param_dtype)
      up = jnp.asarray(interpolation_matrix(d, d * 2 ** i), jnp.float32)
      parts.append(self.decay ** i * jnp.matmul(up, w.astype(jnp.float32),
                                                precision=jax.lax.Precision.HIGHEST))
    k = jnp.concatenate(parts, axis=0)[:self.length]
    if self.normalize:
      k = k / (jnp.sqrt(jnp.sum(k * k, axis=0, keepdims=True)) + 1e-6)
    return k.astype(self.param_dtype)
