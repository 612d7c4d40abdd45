"""FP8 fake quantization (Micikevicius et al. 2022, "FP8 formats for deep learning"): values are
divided by a scale, saturated to the format's largest finite value, cast to
`jnp.float8_e4m3fn` (E4M3: max 448, no infinities; weights and activations) or
`jnp.float8_e5m2` (E5M2: max 57344; gradients), cast back and multiplied by the scale.

Scaling, x ~= scale * fp8(x / scale):
  * current scaling: scale = amax(x) * 2^margin / fp8_max from this tensor (`current_scale`);
  * delayed scaling (Transformer Engine recipe): scale from the max of the amax history of the
    previous H steps (`scale_from_history`), then this step's amax enters the history
    (`update_history`). Both are pure functions of a [H] float32 history per tensor.

Delayed scaling inside the train state (`QuantConfig` with FP8Format(scaling="delayed")): a
Dense / Conv keeps, per quantized tensor ('weight', 'activation', 'gradient' = the output
cotangent), a state {"history": [H] float32, "probe": () float32 zero} in the Flax collection
'quant_state' (`init_delayed_state`); the train state carries the collection in
`TrainState.extra["quant_state"]`. Each step quantizes with scale_from_history(history) and must
append this step's amax, but the gradient's amax exists only in the backward pass and the step
must stay a pure function (no mutable collections inside `value_and_grad`). So every amax leaves
the step the same way, as the cotangent of the tensor's zero `probe` (the overwrite-with-gradient
idea of Flax's fp8 ops, here carrying the amax rather than the new history):
  * weights / activations: `fp8_fake_quant_delayed` quantizes, then `report_amax` (identity in
    the forward pass) returns amax(x) as the probe's cotangent in the backward pass;
  * output gradient: `quantize_cotangent_delayed` (identity in the forward pass) quantizes the
    incoming cotangent g with the gradient history's scale and returns amax(g) as the probe's
    cotangent.
The train step differentiates the loss with respect to (params, quant_state) and asks the policy
for the next state (`QuantPolicy.next_state`; for these formats `FP8Format.next_state` =
update_history(history, probe cotangent)). A layer applied twice in one step would add its two amaxes (an overestimate, so a
safe scale); jaxlab's models apply each layer once. The first step uses scale 1 (empty history),
as in Transformer Engine. Forward-only passes (eval) read the histories and change nothing.
"""

import functools
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


def init_delayed_state(length: int) -> dict:
  """One tensor's delayed-scaling state: {"history": zeros [length], "probe": zero scalar}."""
  return {"history": init_history(length), "probe": jnp.zeros((), jnp.float32)}



@jax.custom_vjp
def report_amax(y: jax.Array, amax_value: jax.Array, probe: jax.Array) -> jax.Array:
  """y in the forward pass; in the backward pass y's cotangent passes through and the probe's
  cotangent is `amax_value` (how a forward amax leaves a differentiated step)."""
  del amax_value, probe
  return y


def _report_amax_fwd(y, amax_value, probe):
  del probe
  return y, amax_value


def _report_amax_bwd(amax_value, g):
  return g, jnp.zeros_like(amax_value), amax_value


report_amax.defvjp(_report_amax_fwd, _report_amax_bwd)


def fp8_fake_quant_delayed(x: jax.Array, state: dict, fmt: str = "e4m3", *, margin: int = 0,
                           pow2: bool = False, ste: str = "identity") -> jax.Array:
  """Per-tensor fp8 fake quant of x with the scale from state["history"] (delayed scaling);
  amax(x) comes back as the cotangent of state["probe"] (module docstring)."""
  scale = scale_from_history(state["history"], fmt, margin=margin, pow2=pow2)
  y = fp8_fake_quant(x, scale, fmt, ste=ste)
  return report_amax(y, amax(x), state["probe"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def quantize_cotangent_delayed(y: jax.Array, state: dict, fmt: str = "e5m2", margin: int = 0,
                               pow2: bool = False) -> jax.Array:
  """y in the forward pass; in the backward pass its cotangent g becomes
  scale * fp8(g / scale) with scale = scale_from_history(state["history"]), and amax(g) is the
  cotangent of state["probe"]."""
  del state, fmt, margin, pow2
  return y


def _qcd_fwd(y, state, fmt, margin, pow2):
  return y, state["history"]


def _qcd_bwd(fmt, margin, pow2, history, g):
  scale = scale_from_history(history, fmt, margin=margin, pow2=pow2)
  gq = (fp8_quantize(g, scale, fmt).astype(jnp.float32) * scale).astype(g.dtype)
  return gq, {"history": jnp.zeros_like(history), "probe": amax(g)}


quantize_cotangent_delayed.defvjp(_qcd_fwd, _qcd_bwd)

