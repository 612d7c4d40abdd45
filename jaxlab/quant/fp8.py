"""FP8 fake quantization (Micikevicius et al. 2022, "FP8 formats for deep learning"): values are
divided by a scale, saturated to the format's largest finite value, cast to
`jnp.float8_e4m3fn` (E4M3: max 448, no infinities; weights and activations) or
`jnp.float8_e5m2` (E5M2: max 57344; gradients), cast back and multiplied by the scale.

Scaling, x ~= scale * fp8(x / scale):
  * current scaling: scale = amax(x) * 2^margin / fp8_max from this tensor (`current_scale`);
  * delayed scaling (Transformer Engine recipe): scale from the max of the amax history of the
    previous H steps (`scale_from_history`), then this step's amax enters the history
    (`update_history`). Both are pure functions of a [H] float32 history per tensor.

How a train state carries delayed scaling (not wired into the layers yet; `quantized_dot_general`
supports current scaling only). The histories are a pytree next to the params, e.g.
`TrainState.extra["fp8_history"] = {"block_0/mlp/up": {"lhs": h, "rhs": h, "grad": h}, ...}`
made with `init_history(H)`. Each step: scales = tree_map(scale_from_history, histories); the
forward pass fake-quantizes with those scales and returns every quantized tensor's amax
(activations and weights from the forward, the output cotangent's from the backward, e.g. as
the gradient of a dummy zero input); then histories = tree_map(update_history, histories, amaxes)
goes into the new state. Nothing is mutable, so the step stays a pure jitted function.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxlab.quant.quantizers import apply_ste, check_choice, reduce_axes

FP8_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
SCALINGS = ("current", "delayed")


def fp8_dtype(fmt: str):
  """The jnp dtype of an fp8 format name ('e4m3' -> float8_e4m3fn, 'e5m2' -> float8_e5m2)."""
  check_choice("fp8 format", fmt, tuple(FP8_DTYPES))
  return FP8_DTYPES[fmt]


def fp8_max(fmt: str) -> float:
  """Largest finite value: 448 (E4M3), 57344 (E5M2)."""
  return float(jnp.finfo(fp8_dtype(fmt)).max)


def amax(x: jax.Array, axes: Sequence[int] | None = None) -> jax.Array:
  """max|x| over `axes` (None = all, a scalar; otherwise keepdims), without gradient."""
  a = jnp.abs(jax.lax.stop_gradient(x)).astype(jnp.float32)
  if axes is None:
    return jnp.max(a)
  return jnp.max(a, axis=tuple(axes), keepdims=True)


def _pow2_ceil(s: jax.Array) -> jax.Array:
  """Smallest power of two >= s (s > 0), exactly, via frexp (s = m 2^e, m in [0.5, 1))."""
  m, e = jnp.frexp(s)
  e = jnp.where(m == 0.5, e - 1, e)
  return jnp.ldexp(jnp.ones_like(s), e)


def scale_from_amax(a: jax.Array, fmt: str, *, margin: int = 0, pow2: bool = False) -> jax.Array:
  """scale = amax * 2^margin / fp8_max (1 where amax = 0); pow2 rounds it up to a power of two
  (then x / scale and the rescaling are exact)."""
  s = jnp.asarray(a, jnp.float32) * (2.0 ** margin) / fp8_max(fmt)
  s = jnp.where(s > 0, s, jnp.ones_like(s))
  return _pow2_ceil(s) if pow2 else s


def current_scale(x: jax.Array, fmt: str, *, axes: Sequence[int] | None = None, margin: int = 0,
                  pow2: bool = False) -> jax.Array:
  """Current scaling: the scale from this tensor's amax (over `axes`, None = per tensor)."""
  return scale_from_amax(amax(x, axes), fmt, margin=margin, pow2=pow2)


def fp8_quantize(x: jax.Array, scale: jax.Array, fmt: str) -> jax.Array:
  """fp8 codes: clip(x / scale, -fp8_max, fp8_max) cast (round to nearest even) to the fp8 dtype.
  Saturating first matters: an out-of-range cast gives NaN (E4M3) or inf (E5M2)."""
  m = fp8_max(fmt)
  v = jax.lax.stop_gradient(x).astype(jnp.float32) / scale
  return jnp.clip(v, -m, m).astype(fp8_dtype(fmt))


def _saturation_bound(fmt: str) -> float:
  """fp8_max plus half its step: larger magnitudes would not round to fp8_max unsaturated."""
  m, nmant = fp8_max(fmt), jnp.finfo(fp8_dtype(fmt)).nmant
  return m + 2.0 ** (math.floor(math.log2(m)) - nmant) / 2


def fp8_fake_quant(x: jax.Array, scale: jax.Array, fmt: str, *,
                   ste: str = "identity") -> jax.Array:
  """scale * fp8(x / scale) in x's dtype with an STE (clipped: zero gradient where the cast
  saturated, |x| / scale > fp8_max + half a step at fp8_max)."""
  scale = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
  y = fp8_quantize(x, scale, fmt).astype(jnp.float32) * scale
  bound = _saturation_bound(fmt) * scale
  return apply_ste(x, y, -bound, bound, ste)


def fp8_fake_quant_current(x: jax.Array, fmt: str = "e4m3", *, granularity: str = "per_tensor",
                           axis: int | Sequence[int] = -1, margin: int = 0, pow2: bool = False,
                           ste: str = "identity") -> jax.Array:
  """fp8 fake quant with current scaling at the given granularity (see quantizers.reduce_axes)."""
  axes = reduce_axes(x.ndim, granularity, axis)
  scale = current_scale(x, fmt, axes=axes, margin=margin, pow2=pow2)
  return fp8_fake_quant(x, scale, fmt, ste=ste)


def init_history(length: int) -> jax.Array:
  """An empty amax history: zeros [length] (scale 1 until amaxes arrive)."""
  if not isinstance(length, int) or length < 1:
    raise ValueError(f"amax history length must be a positive integer, got {length!r}")
  return jnp.zeros((length,), jnp.float32)


def update_history(history: jax.Array, x: jax.Array) -> jax.Array:
  """The new history: amax(x) (x a tensor, or an amax already reduced) at index 0, the older
  entries shifted by one, the oldest dropped."""
  return jnp.concatenate([amax(x)[None], history[:-1]])


def scale_from_history(history: jax.Array, fmt: str, *, margin: int = 0,
                       pow2: bool = False) -> jax.Array:
  """Delayed scaling: the scale from max(history) (see `scale_from_amax`)."""
  return scale_from_amax(jnp.max(history), fmt, margin=margin, pow2=pow2)
