"""pallas_kernels.long_conv: causal convolution with a kernel as long as the sequence.

  "xla"              reference.py: direct O(L^2) grouped lax.conv_general_dilated.
  "fft"              fft.py: rfft/irfft with zero padding to 2L, O(L log L).
  "pallas"           pallas.py: block-Toeplitz Pallas kernels compiled for the TPU.
  "pallas_interpret" the same kernels in the Pallas interpreter (any backend; used by tests).
None picks "pallas" on TPU (slow FFTs, a fast matrix unit) and "fft" elsewhere. Invalid
arguments raise ValueError; a valid call the compiled kernels cannot run (no TPU, a VMEM limit)
runs "fft" instead and logs why (absl logging, warning level).
"""

import jax
import jax.numpy as jnp
from absl import logging

from pallas_kernels._checks import positive_int
from pallas_kernels.long_convolution import fft, pallas, reference

IMPLEMENTATIONS = ("fft", "pallas", "pallas_interpret", "xla")
DTYPES = (jnp.float32, jnp.bfloat16)


def default_implementation() -> str:
  return "pallas" if jax.default_backend() == "tpu" else "fft"


def long_conv(u: jax.Array, k: jax.Array, *, implementation: str | None = None,
              block: int | None = None, block_c: int | None = None) -> jax.Array:
  """Causal long convolution per channel (S4 / H3 / Hyena / SGConv):

    y[b, t, c] = sum_{s <= t} k[s, c] u[b, t - s, c]

  Args:
    u: [batch, length, channels], float32 or bfloat16.
    k: [kernel_length, channels], same dtype, kernel_length <= length (normally equal; a
      shorter kernel is zero-padded).
    implementation: None, "fft", "pallas", "pallas_interpret" or "xla" (module docstring).
    block, block_c: Pallas tile sizes (time steps, a multiple of 8; channels). None:
      pallas.py's defaults. Ignored by "xla" and "fft".

  Returns:
    [batch, length, channels] in u's dtype (computed in float32, or with float32 accumulation).
  """
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}; "
                     f"got {implementation!r}")
  u, k = jnp.asarray(u), jnp.asarray(k)
  if u.ndim != 3:
    raise ValueError(f"u must be [batch, length, channels]; got shape {u.shape}")
  if k.ndim != 2:
    raise ValueError(f"k must be [kernel_length, channels]; got shape {k.shape}")
  if min(u.shape) == 0 or min(k.shape) == 0:
    raise ValueError(f"empty dimension in u {u.shape} or k {k.shape}")
  if k.shape[1] != u.shape[2]:
    raise ValueError(f"k [kernel_length, channels] must have u's {u.shape[2]} channels; "
                     f"got k {k.shape}")
  if k.shape[0] > u.shape[1]:
    raise ValueError(f"kernel_length {k.shape[0]} exceeds the sequence length {u.shape[1]}: "
                     "taps beyond the sequence never reach an output; slice k to the length")
  if not u.dtype == k.dtype or u.dtype not in DTYPES:
    raise ValueError(f"u and k must both be float32 or both bfloat16; got {u.dtype}, {k.dtype}")
  block = positive_int("block", block)
  block_c = positive_int("block_c", block_c)

  impl = implementation or default_implementation()
  if impl in ("pallas", "pallas_interpret"):
    interpret = impl == "pallas_interpret"
    err = block is not None and pallas.block_error(block)
    if err:
      raise ValueError(f"{err} (implementation={impl!r})")
    reason = pallas.unsupported_reason(u.shape, u.dtype,
                                       block=block or pallas.default_block(u.shape[1]),
                                       block_c=block_c, interpret=interpret)
    if reason is None:
      return pallas.long_conv(u, k, block=block, block_c=block_c, interpret=interpret)
    logging.warning("pallas_kernels.long_conv: falling back from %r to 'fft': %s", impl, reason)
    impl = "fft"
  if impl == "fft":
    return fft.long_conv(u, k)
  return reference.long_conv(u, k)
