"""FP8 fake quant against ml_dtypes casts in numpy; current and delayed (amax history) scaling."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.quant import fp8

NP_DTYPES = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
MAX = {"e4m3": 448.0, "e5m2": 57344.0}
MANTISSA_BITS = {"e4m3": 3, "e5m2": 2}
RNG = np.random.default_rng(0)


def representable(v, fmt):
  """v == v cast to the fp8 format and back (numpy + ml_dtypes, independent of XLA)."""
  v = np.asarray(v, np.float32)
  return np.array_equal(v, v.astype(NP_DTYPES[fmt]).astype(np.float32))


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_format_constants(fmt):
  assert fp8.fp8_max(fmt) == MAX[fmt]
  assert fp8.fp8_dtype(fmt) == NP_DTYPES[fmt]


def test_unknown_format_named():
  with pytest.raises(ValueError, match="fp8 format 'e3m4'.*e4m3, e5m2"):
    fp8.fp8_max("e3m4")


# Magnitudes spanning ~2^-6..2^6 around 1 (no subnormal f32 scales: XLA:CPU flushes them).
ELEMENTS = st.floats(-64, 64, width=32).filter(lambda v: v == 0 or abs(v) > 2 ** -6)


@settings(max_examples=10, deadline=None)
@given(x=hnp.arrays(np.float32, st.sampled_from([(7,), (3, 4), (2, 1, 5)]), elements=ELEMENTS),
       fmt=st.sampled_from(["e4m3", "e5m2"]), per_channel=st.booleans())
def test_current_scaling_on_fp8_grid(x, fmt, per_channel):
  granularity = "per_channel" if per_channel else "per_tensor"
  red = tuple(range(x.ndim - 1)) if per_channel else tuple(range(x.ndim))
  amax = np.max(np.abs(x), axis=red, keepdims=True)
  # pow2 scales: y / scale is exact, so the grid check is exact.
  y = np.asarray(fp8.fp8_fake_quant_current(jnp.asarray(x), fmt, granularity=granularity,
                                             pow2=True))
  s = np.asarray(fp8.current_scale(jnp.asarray(x), fmt, axes=red, pow2=True))
  ref_s = np.where(amax > 0, 2.0 ** np.ceil(np.log2(np.where(amax > 0, amax, 1) / MAX[fmt])), 1)
  np.testing.assert_array_equal(s, ref_s.astype(np.float32))
  assert representable(y / s, fmt)
  np.testing.assert_array_equal(y / s, (x / s).astype(NP_DTYPES[fmt]).astype(np.float32))
  # plain scales (amax / fp8_max): codes on the grid, y = codes * scale, amax -> +-fp8_max
  s = np.asarray(fp8.current_scale(jnp.asarray(x), fmt, axes=red))
  np.testing.assert_allclose(s, np.where(amax > 0, amax / MAX[fmt], 1), rtol=2.5e-7)
  codes = np.asarray(fp8.fp8_quantize(jnp.asarray(x), s, fmt)).astype(np.float32)
  assert representable(codes, fmt) and np.abs(codes).max() <= MAX[fmt]
  np.testing.assert_array_equal(codes, np.clip(x / s, -MAX[fmt], MAX[fmt]).astype(
      NP_DTYPES[fmt]).astype(np.float32))
  y = np.asarray(fp8.fp8_fake_quant_current(jnp.asarray(x), fmt, granularity=granularity))
  np.testing.assert_array_equal(y, codes * s)
  at_amax = np.abs(x) == amax
  np.testing.assert_allclose(np.abs(codes[at_amax & (amax > 0)]), MAX[fmt], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_relative_error_bound(fmt):
  """Round to nearest in the normal range: |y - x| <= 2^-(m+1) |x|."""
  x = (RNG.standard_normal(256) * np.exp2(RNG.integers(-4, 4, 256))).astype(np.float32)
  y = np.asarray(fp8.fp8_fake_quant(jnp.asarray(x), 1.0, fmt))
  normal = np.abs(x) >= ml_dtypes.finfo(NP_DTYPES[fmt]).tiny
  err = np.abs(y - x)[normal] / np.abs(x)[normal]
  assert err.max() <= 2.0 ** -(MANTISSA_BITS[fmt] + 1)
  assert err.max() > 2.0 ** -(MANTISSA_BITS[fmt] + 3)  # really quantized


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("ste", ["identity", "clipped"])
def test_saturation_and_ste(fmt, ste):
  scale = np.float32(4 / MAX[fmt])  # representable range [-4, 4]
  x = np.array([-10.0, -4.0, -1.3, 0.0, 0.7, 3.9, 4.1, 4.5, 1e6], np.float32)
  w = np.arange(1, 10, dtype=np.float32)
  y = np.asarray(fp8.fp8_fake_quant(jnp.asarray(x), scale, fmt, ste=ste))
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(y[[0, 1, 6, 7, 8]], [-4, -4, 4, 4, 4])
  g = jax.grad(lambda x: jnp.sum(w * fp8.fp8_fake_quant(x, scale, fmt, ste=ste)))(x)
  # saturated: beyond fp8_max + half a step (4 * 464 / 448 for e4m3, 4 * 61440 / 57344 for e5m2)
  mask = np.abs(x) <= 4 * {"e4m3": 464 / 448, "e5m2": 61440 / 57344}[fmt]
  assert mask[6] and not mask[7]
  np.testing.assert_array_equal(g, w if ste == "identity" else np.where(mask, w, 0))


def test_zero_tensor_scale_one():
  assert float(fp8.current_scale(jnp.zeros(4), "e4m3")) == 1.0
  np.testing.assert_array_equal(fp8.fp8_fake_quant_current(jnp.zeros(4)), np.zeros(4))


def test_margin():
  x = jnp.asarray([3.0, -7.0])
  np.testing.assert_allclose(fp8.current_scale(x, "e4m3", margin=2), 7.0 * 4 / 448, rtol=1e-7)


def np_delayed(tensors, length):
  """Reference delayed scaling: history as a python list, newest first."""
  history, out = [0.0] * length, []
  for t in tensors:
    out.append(max(history))  # the scale uses the history before this step's amax
    history = [float(np.max(np.abs(t)))] + history[:-1]
  return history, out


@settings(max_examples=10, deadline=None)
@given(length=st.integers(1, 5), steps=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_delayed_scaling_history(length, steps, seed):
  rng = np.random.default_rng(seed)
  tensors = [(rng.standard_normal((3, 2)) * rng.uniform(0.1, 100)).astype(np.float32)
             for _ in range(steps)]
  ref_history, ref_amax = np_delayed(tensors, length)
  h = fp8.init_history(length)
  update = jax.jit(fp8.update_history)
  for t, amax in zip(tensors, ref_amax):
    s = fp8.scale_from_history(h, "e4m3")
    np.testing.assert_allclose(s, amax / 448 if amax > 0 else 1.0, rtol=1e-6)
    h = update(h, jnp.asarray(t))
  assert h.shape == (length,)
  np.testing.assert_allclose(h, ref_history, rtol=1e-7)


def test_history_pow2_and_bad_length():
  h = jnp.asarray([3.0, 500.0, 0.0])
  assert float(fp8.scale_from_history(h, "e4m3", pow2=True)) == 2.0  # 500/448 -> 2
  assert float(fp8.scale_from_history(h, "e5m2", pow2=True)) == 2.0 ** -6  # 500/57344 -> 2^-6
  with pytest.raises(ValueError, match="history length"):
    fp8.init_history(0)
