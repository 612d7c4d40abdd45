"""Fake quantizers: pure functions whose forward lands on a quantization grid and whose backward
is a straight-through estimator (STE), written with `jax.custom_vjp`.

Conventions shared by every quantizer here:
  * the returned array has x's shape and dtype and holds the dequantized values (fake quant);
  * scales computed from the data (`int_scale`, XNOR / TWN scales) are constants for autodiff
    (`stop_gradient`): the gradient reaches x only through the STE. LSQ is the exception: its
    step is an input that receives its own gradient;
  * granularity names which axes share one scale (`reduce_axes`):
      per_tensor   one scale for the whole array;
      per_channel  one scale per index of `axis` (int or tuple), e.g. a Dense kernel's output
                   axis -1; the scale reduces over every other axis;
      per_token    one scale per index of every axis except `axis` (the feature axis, default
                   -1), e.g. one per row of activations [tokens, features];
  * STE ("identity" or "clipped"): identity passes the cotangent unchanged (Bengio et al. 2013);
    clipped zeroes it where the quantizer saturates: for integer and fp8 grids outside the
    values that round onto the grid (up to half a step beyond its end points, so the element
    that sets a max-abs scale keeps its gradient whatever the float rounding of x / scale); for
    sign-based quantizers where |x| > 1 (the hardtanh STE of Hubara et al. 2016);
  * arithmetic in float32 whatever the input dtype (`compute_dtype`: float64 stays float64):
    scales, x / scale, rounding (stochastic included), the dequantized value and the STE's
    bounds are float32, and only the result is cast back to x's dtype (as qwix does). In bfloat16
    the scale max|x| / qmax and x / scale are rounded to 8 significant bits (~10% of int8 codes
    one off) and floor(v + u) is biased (E[SR(100.5)] = 100.75). Gradients reaching x are in x's
    dtype.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

GRANULARITIES = ("per_tensor", "per_channel", "per_token")
ROUNDINGS = ("nearest", "stochastic")
STES = ("identity", "clipped")
MIN_BITS, MAX_BITS = 2, 8


def check_choice(kind: str, value, valid: Sequence) -> None:
  """ValueError naming the option, the bad value and the valid values."""
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(map(str, valid))}")


def check_bits(bits: int) -> None:
  if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def int_bounds(bits: int, symmetric: bool = True) -> tuple[int, int]:
  """Integer grid [qmin, qmax]: symmetric (narrow) range [-(2^(b-1) - 1), 2^(b-1) - 1], so 0 is
  the centre and +-amax both map onto the grid; asymmetric (unsigned) range [0, 2^b - 1]."""
  check_bits(bits)
  if symmetric:
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype quantizers compute in: float32 for bfloat16 / float16 / float32 (and non-float)
  inputs, float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _as_axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"axis {a} out of range for an array of rank {ndim}")
  return tuple(sorted({a % ndim for a in axes}))


def reduce_axes(ndim: int, granularity: str, axis: int | Sequence[int] = -1) -> tuple[int, ...]:
  """Axes a scale statistic reduces over (see the module docstring for the three granularities)."""
  check_choice("granularity", granularity, GRANULARITIES)
  if granularity == "per_tensor" or ndim == 0:
    return tuple(range(ndim))
  axes = _as_axes(axis, ndim)
  if granularity == "per_channel":
    return tuple(a for a in range(ndim) if a not in axes)
  return axes


def _nonzero(s: jax.Array) -> jax.Array:
  """Scale 1 where the statistic is 0 (an all-zero slice quantizes to 0 with any scale)."""
  return jnp.where(s > 0, s, jnp.ones_like(s))


def int_scale(x: jax.Array, bits: int, symmetric: bool = True,
              axes: Sequence[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """(scale, zero_point) from the data, reduced over `axes` (None = all) with keepdims, in
  compute_dtype(x.dtype) (float32 for bfloat16 x).

  Symmetric: scale = max|x| / qmax, zero_point = 0. Asymmetric (affine, Jacob et al. 2018):
  range [min(x, 0), max(x, 0)] (so real 0 is exactly representable), scale = range / (qmax - qmin),
  zero_point = qmin - round(min / scale), an integer in [qmin, qmax].
  """
  qmin, qmax = int_bounds(bits, symmetric)
  x = jax.lax.stop_gradient(x).astype(compute_dtype(x.dtype))
  axes = tuple(range(x.ndim)) if axes is None else tuple(axes)
  if symmetric:
    scale = _nonzero(jnp.max(jnp.abs(x), axis=axes, keepdims=True) / qmax)
    return scale, jnp.zeros_like(scale)
  lo = jnp.minimum(jnp.min(x, axis=axes, keepdims=True), 0)
  hi = jnp.maximum(jnp.max(x, axis=axes, keepdims=True), 0)
  scale = _nonzero((hi - lo) / (qmax - qmin))
  zero_point = jnp.clip(qmin - jnp.round(lo / scale), qmin, qmax)
  return scale, zero_point


def round_values(v: jax.Array, rounding: str = "nearest",
                 key: jax.Array | None = None) -> jax.Array:
  """Round to integers: nearest (ties to even) or stochastic, floor(v + u) with u ~ U[0, 1), so
  E[round(v)] = v (Gupta et al. 2015). Stochastic rounding needs an explicit PRNG key. Computed
  in compute_dtype(v.dtype) and returned in v's dtype (exact: the floor or ceil of a float is
  representable in its format)."""
  check_choice("rounding", rounding, ROUNDINGS)
  if rounding == "stochastic" and key is None:
    raise ValueError("rounding='stochastic' needs a PRNG key (key=...)")
  v = jnp.asarray(v)
  ct = compute_dtype(v.dtype)
  if rounding == "nearest":
    r = jnp.round(v.astype(ct))
  else:
    r = jnp.floor(v.astype(ct) + jax.random.uniform(key, v.shape, ct))
  return r.astype(v.dtype)


# ---------------------------------------------------------------------------------------------
# The straight-through estimator: forward returns the quantized value, backward the STE.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def straight_through(x: jax.Array, y: jax.Array, lo: jax.Array, hi: jax.Array,
                     ste: str) -> jax.Array:
  """y in the forward pass; in the backward pass dL/dx = dL/dy (ste='identity') or
  dL/dy * [lo <= x <= hi] (ste='clipped', compared in lo's dtype: float32 bounds are not rounded
  to a bfloat16 x's grid); y, lo and hi get zero cotangents."""
  del x, lo, hi, ste
  return y


def _straight_through_fwd(x, y, lo, hi, ste):
  return y, (x, lo, hi)


def _straight_through_bwd(ste, residuals, g):
  x, lo, hi = residuals
  if ste == "clipped":
    xc = x.astype(lo.dtype)
    g = jnp.where((xc >= lo) & (xc <= hi), g, jnp.zeros_like(g))
  return g.astype(x.dtype), jnp.zeros_like(x), jnp.zeros_like(lo), jnp.zeros_like(hi)


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def apply_ste(x: jax.Array, y: jax.Array, lo, hi, ste: str) -> jax.Array:
  """y (computed in compute_dtype) cast to x's dtype, with the STE on x; the clip bounds lo, hi
  stay in compute_dtype(x.dtype)."""
  check_choice("ste", ste, STES)
  ct = compute_dtype(x.dtype)
  return straight_through(x, y.astype(x.dtype), jnp.asarray(lo, ct), jnp.asarray(hi, ct), ste)


# ---------------------------------------------------------------------------------------------
# Integer fake quantization.


def int_quantize(x: jax.Array, scale: jax.Array, zero_point: jax.Array | float = 0.0, *,
                 bits: int, symmetric: bool = True, rounding: str = "nearest",
                 key: jax.Array | None = None) -> jax.Array:
  """Integer codes q = clip(round(x / scale) + zero_point, qmin, qmax) as compute_dtype(x.dtype)
  floats (float32 for bfloat16 x; x, scale and zero point are cast to it; no gradient).

  Uniform affine quantization (Jacob et al. 2018, eq. 1: r = S (q - Z))."""
  qmin, qmax = int_bounds(bits, symmetric)
  ct = compute_dtype(x.dtype)
  x = jax.lax.stop_gradient(x).astype(ct)
  scale, zero_point = jnp.asarray(scale, ct), jnp.asarray(zero_point, ct)
  q = round_values(x / scale, rounding, key) + zero_point
  return jnp.clip(q, qmin, qmax)


def int_fake_quant_with_scale(x: jax.Array, scale: jax.Array,
                              zero_point: jax.Array | float = 0.0, *, bits: int,
                              symmetric: bool = True, rounding: str = "nearest",
                              ste: str = "identity", key: jax.Array | None = None) -> jax.Array:
  """S (q - Z) with the given scale S and zero point Z (Jacob et al. 2018, eq. 1) and an STE;
  the clipped STE keeps the gradient where x / S + Z lies in [qmin - 1/2, qmax + 1/2] (where
  rounding, not saturation, decides the code). Computed in compute_dtype(x.dtype), returned in
  x's dtype."""
  qmin, qmax = int_bounds(bits, symmetric)
  ct = compute_dtype(x.dtype)
  scale = jax.lax.stop_gradient(jnp.asarray(scale, ct))
  zero_point = jax.lax.stop_gradient(jnp.asarray(zero_point, ct))
  q = int_quantize(x, scale, zero_point, bits=bits, symmetric=symmetric, rounding=rounding,
                   key=key)
  y = (q - zero_point) * scale
  return apply_ste(x, y, (qmin - 0.5 - zero_point) * scale, (qmax + 0.5 - zero_point) * scale,
                   ste)


def int_fake_quant(x: jax.Array, *, bits: int = 8, symmetric: bool = True,
                   granularity: str = "per_tensor", axis: int | Sequence[int] = -1,
                   rounding: str = "nearest", ste: str = "identity",
                   key: jax.Array | None = None) -> jax.Array:
  """Integer fake quant with the scale from this tensor (max-abs / min-max calibration) at the
  given granularity; see `int_scale` and `int_fake_quant_with_scale`."""
  axes = reduce_axes(x.ndim, granularity, axis)
  scale, zero_point = int_scale(x, bits, symmetric, axes)
  return int_fake_quant_with_scale(x, scale, zero_point, bits=bits, symmetric=symmetric,
                                   rounding=rounding, ste=ste, key=key)


# ---------------------------------------------------------------------------------------------
# Learned step size quantization (LSQ, Esser et al. 2020).


def lsq_bounds(bits: int, signed: bool = True) -> tuple[int, int]:
  """LSQ's grid [-Q_N, Q_P]: signed Q_N = 2^(b-1), Q_P = 2^(b-1) - 1; unsigned Q_N = 0,
  Q_P = 2^b - 1 (Esser et al. 2020, Sec. 2)."""
  check_bits(bits)
  if signed:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def lsq_init_step(x: jax.Array, bits: int, signed: bool = True,
                  default_mean_abs: float | None = None) -> jax.Array:
  """Initial step s = 2 <|v|> / sqrt(Q_P) (Esser et al. 2020, Sec. 2.1). default_mean_abs, if
  given, replaces <|v|> when it is 0 (an all-zero, shape-only init input)."""
  _, qp = lsq_bounds(bits, signed)
  mean_abs = jnp.mean(jnp.abs(jax.lax.stop_gradient(x).astype(jnp.float32)))
  if default_mean_abs is not None:
    mean_abs = jnp.where(mean_abs > 0, mean_abs, jnp.float32(default_mean_abs))
  return 2 * mean_abs / math.sqrt(qp)


@jax.custom_vjp
def scale_gradient(x: jax.Array, g: float | jax.Array) -> jax.Array:
  """x in the forward pass; the cotangent is multiplied by g in the backward pass."""
  del g
  return x


def _scale_gradient_fwd(x, g):
  return x, g


def _scale_gradient_bwd(g_scale, ct):
  return ct * g_scale, jnp.zeros_like(g_scale)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def _sum_to_shape(a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums a broadcast array back to `shape` (the adjoint of broadcasting)."""
  lead = a.ndim - len(shape)
  a = jnp.sum(a, axis=tuple(range(lead))) if lead else a
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
  return jnp.sum(a, axis=axes, keepdims=True) if axes else a


def _lsq_v(x, step):
  """(v = x / step, step) in the compute dtype of x and step (float32 for bfloat16)."""
  ct = compute_dtype(jnp.promote_types(x.dtype, step.dtype))
  step = step.astype(ct)
  return x.astype(ct) / step, step


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lsq(x, step, qn, qp):
  v, step = _lsq_v(x, step)
  return (jnp.round(jnp.clip(v, qn, qp)) * step).astype(x.dtype)


def _lsq_fwd(x, step, qn, qp):
  return _lsq(x, step, qn, qp), (x, step)


def _lsq_bwd(qn, qp, residuals, g):
  x, step = residuals
  v, _ = _lsq_v(x, step)
  inside = (v > qn) & (v < qp)
  dx = jnp.where(inside, g, jnp.zeros_like(g))
  dstep = g.astype(v.dtype) * jnp.where(v <= qn, qn, jnp.where(v >= qp, qp, jnp.round(v) - v))
  return dx, _sum_to_shape(dstep, jnp.shape(step)).astype(step.dtype)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_fake_quant(x: jax.Array, step: jax.Array, *, bits: int, signed: bool = True,
                   grad_scale: float | None = None) -> jax.Array:
  """LSQ (Esser et al. 2020, eqs. 1-3): v_hat = round(clip(v / s, -Q_N, Q_P)) * s.

  Gradients: dv_hat/dv = 1 inside (-Q_N, Q_P), else 0 (clipped STE); dv_hat/ds = round(v/s) - v/s
  inside, -Q_N / Q_P below / above (eq. 3). The step gradient is multiplied by
  g = 1 / sqrt(N Q_P) (Sec. 2.2), N = number of elements sharing one step (x.size / step.size);
  `grad_scale` overrides g. `step` is a scalar or broadcasts against x (e.g. per channel); it keeps
  its float dtype (a float32 step with bfloat16 x: v / s in float32, the step gradient float32).
  """
  qn, qp = lsq_bounds(bits, signed)
  step = jnp.asarray(step)
  if not jnp.issubdtype(step.dtype, jnp.floating):
    step = step.astype(compute_dtype(x.dtype))
  if grad_scale is None:
    n = x.size // max(step.size, 1)
    grad_scale = 1.0 / math.sqrt(n * qp)
  return _lsq(x, scale_gradient(step, jnp.asarray(grad_scale, step.dtype)), qn, qp)


# ---------------------------------------------------------------------------------------------
# Binary and ternary weights.


def _sign(x: jax.Array) -> jax.Array:
  """sign with sign(0) = +1, so every value lands on {-1, +1}."""
  return jnp.where(x >= 0, jnp.ones_like(x), -jnp.ones_like(x))


def binary_fake_quant(x: jax.Array, *, scaled: bool = True, granularity: str = "per_channel",
                      axis: int | Sequence[int] = -1, ste: str = "clipped") -> jax.Array:
  """Binary weights: BinaryConnect sign(W) (Courbariaux et al. 2015, eq. 1, deterministic) when
  scaled=False; XNOR-Net alpha * sign(W) with alpha = mean|W| (Rastegari et al. 2016, eq. 4) per
  output channel (`axis`) or per tensor when scaled=True. STE on x: identity or clipped to
  |x| <= 1 (hardtanh, Hubara et al. 2016); alpha is a constant for autodiff."""
  xs = jax.lax.stop_gradient(x).astype(compute_dtype(x.dtype))
  y = _sign(xs)
  if scaled:
    axes = reduce_axes(x.ndim, granularity, axis)
    y = y * jnp.mean(jnp.abs(xs), axis=axes, keepdims=True)
  return apply_ste(x, y, -1.0, 1.0, ste)


def ternary_fake_quant(x: jax.Array, *, threshold: float = 0.7, granularity: str = "per_channel",
                       axis: int | Sequence[int] = -1, ste: str = "identity") -> jax.Array:
  """Ternary weight networks (Li et al. 2016, eqs. 9-11): delta = threshold * mean|W|,
  t = sign(W) [|W| > delta], alpha = mean of |W| over {|W| > delta}; returns alpha * t. Scales
  per output channel (`axis`) or per tensor; STE on x as in `binary_fake_quant`."""
  if not threshold > 0:
    raise ValueError(f"ternary threshold must be > 0, got {threshold!r}")
  xs = jax.lax.stop_gradient(x).astype(compute_dtype(x.dtype))
  axes = reduce_axes(x.ndim, granularity, axis)
  a = jnp.abs(xs)
  delta = threshold * jnp.mean(a, axis=axes, keepdims=True)
  keep = a > delta
  count = jnp.sum(keep, axis=axes, keepdims=True)
  alpha = jnp.sum(jnp.where(keep, a, 0), axis=axes, keepdims=True) / jnp.maximum(count, 1)
  y = alpha * jnp.where(keep, _sign(xs), jnp.zeros_like(xs))
  return apply_ste(x, y, -1.0, 1.0, ste)
