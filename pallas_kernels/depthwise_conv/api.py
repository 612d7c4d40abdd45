"""pallas_kernels.depthwise_conv: 1-D causal and 2-D large-kernel depthwise convolutions.

`implementation` follows the one rule of pallas_kernels._dispatch (its docstring):
  None               one program that runs, per platform it is lowered for, the Pallas kernels
                     (pallas.py: forward, dx, dw) compiled for "tpu" (Mosaic) or "cuda"
                     (Triton), and "xla" everywhere else and wherever pallas.unsupported_reason
                     refuses the call (a block size the target cannot tile with, a TPU tile
                     over the VMEM budget, a GPU array past int32 offsets; logged).
  "pallas"           the kernels compiled for this machine's TPU / GPU; ValueError with the
                     reason where there is none or they refuse the call.
  "pallas_interpret" the kernels in the Pallas interpreter, laid out for this machine's
                     accelerator, else the TPU's (used by tests); ValueError when refused.
  "xla"              shift_add.py: sums of shifted, per-channel-scaled inputs (fuses into one
                     loop on CPU, where XLA's grouped convolution is slow).
reference.py (lax.conv_general_dilated, feature_group_count = C) is the oracle of the tests.
Invalid arguments raise ValueError whatever the implementation.
"""

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _dispatch
from pallas_kernels._checks import positive_int
from pallas_kernels.depthwise_conv import pallas, reference, shift_add

XLA_PATHS = ("xla",)  # the dispatcher's paths: built per call (they close over static args)
IMPLEMENTATIONS = (_dispatch.KERNEL, _dispatch.INTERPRET, *XLA_PATHS)
KERNEL_TARGETS = ("tpu", "gpu")
DTYPES = (jnp.float32, jnp.bfloat16)


def default_implementation() -> str:
  """What implementation=None runs on this machine's default backend (calls the kernels
  accept): "pallas" on a TPU or GPU, "xla" elsewhere."""
  return "pallas" if _dispatch.backend_target() in KERNEL_TARGETS else "xla"


def _check_common(x, w, ndim: int, implementation):
  """Shared checks; returns (x, w) as arrays."""
  _dispatch.check_implementation(implementation, XLA_PATHS)
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


def _run(op: str, implementation, x, w, xla, kernel, pads, block, block_c):
  """_dispatch.run with the "xla" path `xla` and the Pallas entry `kernel(x, w, target=,
  interpret=)`."""
  return _dispatch.run(
      op, implementation, (x, w), paths={"xla": xla}, default="xla",
      kernel=lambda target, interpret: lambda x, w: kernel(x, w, target=target,
                                                          interpret=interpret),
      unsupported_reason=lambda target, interpret: pallas.unsupported_reason(
          x.shape, w.shape, x.dtype, pads=pads, block=block, block_c=block_c, target=target),
      kernel_targets=KERNEL_TARGETS)


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
    block_l, block_c: Pallas tile sizes (time steps, channels; None: pallas.py's defaults).
      TPU: block_l a multiple of 8 (16 for bf16), block_c a multiple of 128 or >= C; GPU:
      powers of two. A size the target's kernel cannot take is refused there (rule above).
      Ignored by "xla".

  Returns:
    [batch, length, channels] in x's dtype (computed in float32).
  """
  x, w = _check_common(x, w, 1, implementation)
  if not isinstance(causal, (bool, np.bool_)):
    raise ValueError(f"causal must be a Python bool; got {causal!r}")
  block_l = positive_int("block_l", block_l)
  block_c = positive_int("block_c", block_c)
  causal = bool(causal)
  return _run("depthwise_conv1d", implementation, x, w,
              lambda x, w: shift_add.depthwise_conv1d(x, w, causal=causal),
              functools.partial(pallas.depthwise_conv1d, causal=causal, block_l=block_l,
                                block_c=block_c),
              (reference.conv1d_pads(w.shape[0], causal),), block_l, block_c)


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
    block_h, block_c: Pallas tile sizes (TPU output rows, unused on GPU; channels: TPU a
      multiple of 128 or >= C, GPU a power of two). None: pallas.py's defaults (block_h shrinks
      to fit the TPU's VMEM). Ignored by "xla".

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
  return _run("depthwise_conv2d", implementation, x, w,
              lambda x, w: shift_add.depthwise_conv2d(x, w, padding=pads),
              functools.partial(pallas.depthwise_conv2d, padding=pads, block_h=block_h,
                                block_c=block_c),
              pads, block_h, block_c)
