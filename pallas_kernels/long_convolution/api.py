"""pallas_kernels.long_conv: causal convolution with a kernel as long as the sequence.

  "xla"              reference.py: direct O(L^2) grouped lax.conv_general_dilated.
  "fft"              fft.py: rfft/irfft with zero padding to 2L, O(L log L).
  "pallas"           pallas.py: block-Toeplitz kernels (memory linear in L) compiled for this
                     machine's TPU (Mosaic, MXU) or GPU (Triton).
  "pallas_interpret" the same kernels in the Pallas interpreter, laid out for this machine's
                     accelerator or, on a CPU host, the TPU (used by tests).
None follows the one rule of every op (pallas_kernels/_dispatch.py): one program that runs the
kernels compiled for the platform it is lowered for (tpu, cuda) and "fft" on every other
platform or where the kernels are refused for that target (logged): by
pallas.unsupported_reason (block sizes, VMEM, int32 indices) or, for None only, beyond
MAX_LENGTH[target], where the FFT is the right tool. Invalid arguments raise ValueError; so does
an explicit "pallas" / "pallas_interpret" the kernels cannot run (e.g. "pallas" on a CPU).

Where FFT wins (MAX_LENGTH; estimates from operation counts, to re-tune with device timings):
per output element the kernels do ~L/2 multiply-adds (O(L^2) per channel), the FFT path
~15 log2(2L) flops (three real FFTs of length 2L) and ~6 passes over complex64 HBM buffers.
  * GPU: the kernels run on the CUDA cores (a depthwise Toeplitz product has no matrix to share
    across channels for the tensor cores) while cuFFT is memory-bound: ~48 bytes per element at
    ~20 float32 flops per byte (H100) is worth ~1000 flops, which the kernel's ~L flops pass at
    L ~ 1000: MAX_LENGTH 1024.
  * TPU: the kernels' products run on the MXU, the FFT on the vector units, whose float32 rate is
    a small fraction of the MXU's; the flop ratio L / (15 log2 2L) is 21 at 4096 and 39 at 8192
    and grows linearly beyond: MAX_LENGTH 8192.
"""

import jax
import jax.numpy as jnp

from pallas_kernels import _dispatch
from pallas_kernels._checks import positive_int
from pallas_kernels.long_convolution import fft, pallas, reference

IMPLEMENTATIONS = ("fft", "pallas", "pallas_interpret", "xla")
DTYPES = (jnp.float32, jnp.bfloat16)
MAX_LENGTH = {"tpu": 8192, "gpu": 1024}  # None picks the kernels up to here (module docstring)
PATHS = {"fft": fft.long_conv, "xla": reference.long_conv}


def length_reason(length: int, target: str) -> str | None:
  """Why None does not pick the `target` kernels at this sequence length (None if it does)."""
  if length > MAX_LENGTH[target]:
    return (f"length {length} > {MAX_LENGTH[target]}: the block-Toeplitz kernels do O(L^2) work "
            f"per channel, the FFT O(L log L), which is the faster path here on {target} "
            "(long_convolution/api.py)")
  return None


def default_implementation(length: int | None = None) -> str:
  """What None runs on this machine's backend for a call the kernels take at `length` (None:
  short enough): "pallas" on a TPU or GPU up to MAX_LENGTH, else "fft"."""
  target = _dispatch.backend_target()
  if target is None or (length is not None and length_reason(length, target)):
    return "fft"
  return "pallas"


def long_conv(u: jax.Array, k: jax.Array, *, implementation: str | None = None,
              block: int | None = None, block_c: int | None = None) -> jax.Array:
  """Causal long convolution per channel (S4 / H3 / Hyena / SGConv):

    y[b, t, c] = sum_{s <= t} k[s, c] u[b, t - s, c]

  Args:
    u: [batch, length, channels], float32 or bfloat16.
    k: [kernel_length, channels], same dtype, kernel_length <= length (normally equal; a
      shorter kernel is zero-padded).
    implementation: None, "fft", "pallas", "pallas_interpret" or "xla" (module docstring).
    block, block_c: Pallas tile sizes (time steps: a multiple of 128 on TPU, a power of two on
      GPU; channels). None: pallas.py's defaults. Ignored by "xla" and "fft"; a value a target
      cannot take makes None run "fft" there.

  Returns:
    [batch, length, channels] in u's dtype (computed in float32, or with float32 accumulation).
  """
  _dispatch.check_implementation(implementation, PATHS)
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

  def unsupported(target, interpret):
    del interpret  # the interpreter runs the target's layout, limits included
    reason = pallas.unsupported_reason(u.shape, u.dtype, block=block, block_c=block_c,
                                       target=target)
    if reason is None and implementation is None:
      reason = length_reason(u.shape[1], target)
    return reason

  def kernel(target, interpret):
    return lambda u, k: pallas.long_conv(u, k, block=block, block_c=block_c, target=target,
                                         interpret=interpret)

  return _dispatch.run("long_conv", implementation, (u, k), paths=PATHS, default="fft",
                       kernel=kernel, unsupported_reason=unsupported)
