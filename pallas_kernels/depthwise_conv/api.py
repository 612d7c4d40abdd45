"""pallas_kernels.depthwise_conv: 1-D causal and 2-D large-kernel depthwise convolutions.

  "xla"              shift_add.py: sums of shifted, per-channel-scaled inputs (fuses into one
                     loop on CPU, where XLA's grouped convolution is slow).
reference.py (lax.conv_general_dilated, feature_group_count = C) is the oracle of the tests.
  "pallas"           pallas.py: Pallas kernels (forward, dx, dw) compiled for the TPU.
  "pallas_interpret" the same kernels in the Pallas interpreter (any backend; used by tests).
None picks "pallas" on TPU and "xla" elsewhere (on GPU, XLA calls cuDNN's depthwise
convolutions; the kernels' halo'd tiles do not fit Triton's power-of-two blocks). Invalid
arguments raise ValueError; a valid call the compiled kernels cannot run (no TPU, a VMEM limit)
runs "xla" instead and logs why (absl logging, warning level).
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pallas_kernels._checks import positive_int
from pallas_kernels.depthwise_conv import pallas, reference, shift_add

IMPLEMENTATIONS = ("pallas", "pallas_interpret", "xla")
DTYPES = (jnp.float32, jnp.bfloat16)


def default_implementation() -> str:
  return "pallas" if jax.default_backend() == "tpu" else "xla"


def _check_common(x, w, ndim: int, implementation):
  """Shared checks; returns (x, w) as arrays."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}; "
                     f"got {implementation!r}")
  x, w = jnp.asarray(x), jnp.asarray(w)
  layout = "[batch, length, channels]" if ndim == 1 else "[batch, height, width, channels]"
  wlayout = "[taps, channels]" if ndim == 1 else "[kh, kw, channels]"
  if x.ndim != ndim + 2:
    raise ValueError(f"x must be {layout}; got shape {x.shape}")
  if w.ndim != ndim + 1:
    raise ValueError(f"w must be {wlayout}; got shape {w.shape}")
  if w.shape[-1] != x.shape[-1]:
    raise ValueError(f"w {wlayout} must have x's {x.shape[-1]} channels; got w {w.shape}")
  if min(x.shape) == 0 or min(w.shape) == 0:
    raise ValueError(f"empty dimension in x {x.shape} or w {w.shape}")
  if not x.dtype == w.dtype or x.dtype not in DTYPES:
    raise ValueError(f"x and w must both be float32 or both bfloat16; got {x.dtype}, {w.dtype}")
  return x, w


def _resolve(implementation, x, w, block, block_c, *, block_name: str, need: int, align: int,
             default_block: int) -> str:
  """The implementation to run: validates the Pallas block sizes, then falls back to 'xla'
  (logging why) when the compiled kernels cannot run this call."""
  impl = implementation or default_implementation()
  if impl == "xla":
    return impl
  interpret = impl == "pallas_interpret"
  err = block is not None and pallas.block_error(block_name, block, need=need, align=align)
  err = err or (block_c is not None and pallas.block_c_error(block_c, x.shape[-1], interpret))
  if err:
    raise ValueError(f"{err} (implementation={impl!r})")
  reason = pallas.unsupported_reason(
      x.shape, w.shape, x.dtype, block=block or default_block,
      block_c=block_c or pallas.default_block_c(x.shape[-1]), interpret=interpret)
  if reason is None:
    return impl
  logging.warning("pallas_kernels.depthwise_conv: falling back from %r to 'xla': %s", impl,
                  reason)
  return "xla"


def depthwise_conv1d(x: jax.Array, w: jax.Array, *, causal: bool = True,
                     implementation: str | None = None, block_l: int | None = None,
                     block_c: int | None = None) -> jax.Array:
  """Depthwise 1-D convolution, the short causal conv of Hyena / Mamba blocks.

    causal=True:  y[b, t, c] = sum_{k<K} w[k, c] x[b, t - k, c]  (x before t = 0 is 0)
    causal=False: y[b, t, c] = sum_{k<K} w[k, c] x[b, t + K//2 - k, c]  (centred)

  Tap order: w[0] multiplies the current sample, w[k] the sample k steps back (the flip of a
  PyTorch Conv1d weight: torch_weight[c, 0, j] = w[K - 1 - j, c]).

  Args:
    x: [batch, length, channels], float32 or bfloat16.
    w: [taps, channels], same dtype; any number of taps (also more than length).
    causal: as above (a Python bool).
    implementation: None, "pallas", "pallas_interpret" or "xla" (module docstring).
    block_l, block_c: Pallas tile sizes (time steps, a multiple of 8 and >= taps - 1;
      channels). None: pallas.py's defaults. Ignored by "xla".

  Returns:
    [batch, length, channels] in x's dtype (computed in float32).
  """
  x, w = _check_common(x, w, 1, implementation)
  if not isinstance(causal, (bool, np.bool_)):
    raise ValueError(f"causal must be a Python bool; got {causal!r}")
  block_l = positive_int("block_l", block_l)
  block_c = positive_int("block_c", block_c)
  K = w.shape[0]
  impl = _resolve(implementation, x, w, block_l, block_c, block_name="block_l", need=K - 1,
                  align=pallas.SUBLANES, default_block=pallas.default_block_l(x.shape[1], K))
  if impl == "xla":
    return shift_add.depthwise_conv1d(x, w, causal=bool(causal))
  return pallas.depthwise_conv1d(x, w, causal=bool(causal), block_l=block_l, block_c=block_c,
                                 interpret=impl == "pallas_interpret")


def _explicit_padding(padding, ksize):
  """"SAME" / "VALID" / ((top, bottom), (left, right)) -> explicit pairs, each in [0, k - 1]."""
  if isinstance(padding, str):
    if padding.upper() == "SAME":
      return tuple(reference.same_pads(k) for k in ksize)
    if padding.upper() == "VALID":
      return ((0, 0), (0, 0))
    raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)); "
                     f"got {padding!r}")
  try:
    pads = tuple((p[0], p[1]) for p in padding)
    ok = len(pads) == 2 and len(padding[0]) == 2 and len(padding[1]) == 2
  except (TypeError, IndexError):
    ok = False
  if not ok or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
                       for pair in pads for p in pair):
    raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)) of "
                     f"ints; got {padding!r}")
  for (lo, hi), k, axis in zip(pads, ksize, ("height", "width")):
    if not (0 <= lo <= k - 1 and 0 <= hi <= k - 1):
      raise ValueError(f"{axis} padding {(lo, hi)} must lie in [0, kernel size - 1 = {k - 1}] "
                       "per side")
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def depthwise_conv2d(x: jax.Array, w: jax.Array, *, padding="SAME",
                     implementation: str | None = None, block_h: int | None = None,
                     block_c: int | None = None) -> jax.Array:
  """Depthwise 2-D convolution (cross-correlation, as lax.conv_general_dilated) for large
  kernels: RepLKNet's 31x31, ConvNeXt's 7x7.

    y[b, h, v, c] = sum_{i<kh, j<kw} w[i, j, c] xp[b, h + i, v + j, c]

  with xp = x zero-padded by `padding`.

  Args:
    x: [batch, height, width, channels], float32 or bfloat16.
    w: [kh, kw, channels], same dtype.
    padding: "SAME" (output size = input size; pads ((kh-1)//2, kh//2), ((kw-1)//2, kw//2)),
      "VALID", or ((top, bottom), (left, right)) with each pad in [0, kernel size - 1].
    implementation: None, "pallas", "pallas_interpret" or "xla" (module docstring).
    block_h, block_c: Pallas tile sizes (output rows, >= kh - 1; channels). None: pallas.py's
      defaults. Ignored by "xla".

  Returns:
    [batch, height + top + bottom - kh + 1, width + left + right - kw + 1, channels] in x's
    dtype (computed in float32).
  """
  x, w = _check_common(x, w, 2, implementation)
  kh, kw = w.shape[:2]
  pads = _explicit_padding(padding, (kh, kw))
  out = (x.shape[1] + sum(pads[0]) - kh + 1, x.shape[2] + sum(pads[1]) - kw + 1)
  if min(out) < 1:
    raise ValueError(f"kernel {(kh, kw)} does not fit the padded input {x.shape[1:3]} + "
                     f"padding {pads} (output would be {out})")
  block_h = positive_int("block_h", block_h)
  block_c = positive_int("block_c", block_c)
  impl = _resolve(implementation, x, w, block_h, block_c, block_name="block_h", need=kh - 1,
                  align=1, default_block=pallas.default_block_h(out[0], kh))
  if impl == "xla":
    return shift_add.depthwise_conv2d(x, w, padding=pads)
  return pallas.depthwise_conv2d(x, w, padding=pads, block_h=block_h, block_c=block_c,
                                 interpret=impl == "pallas_interpret")
