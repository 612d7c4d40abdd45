"""Integer, LSQ, binary and ternary fake quantizers against plain-numpy references: values on the
grid, STE gradients, LSQ step gradients, stochastic rounding unbiased."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.quant import quantizers as qz

# rbg keys: threefry random bits are slow to compile on CPU.
KEY = jax.random.key(0, impl="rbg")
RNG = np.random.default_rng(0)


def np_bounds(bits, symmetric):
  return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def np_axes(ndim, granularity, axis):
  """Reduction axes of the scale statistic, written out independently of the library."""
  if granularity == "per_tensor":
    return tuple(range(ndim))
  axis = {a % ndim for a in ((axis,) if isinstance(axis, int) else axis)}
  if granularity == "per_channel":
    return tuple(a for a in range(ndim) if a not in axis)
  return tuple(sorted(axis))


def np_int_fake_quant(x, bits, symmetric, axes):
  """(fake-quant values, integer codes, scale, zero point) in float32 numpy."""
  x = np.asarray(x, np.float32)
  qmin, qmax = np_bounds(bits, symmetric)
  if symmetric:
    s = np.max(np.abs(x), axis=axes, keepdims=True) / np.float32(qmax)
    s = np.where(s > 0, s, np.float32(1))
    zp = np.zeros_like(s)
  else:
    lo = np.minimum(np.min(x, axis=axes, keepdims=True), 0)
    hi = np.maximum(np.max(x, axis=axes, keepdims=True), 0)
    s = (hi - lo) / np.float32(qmax - qmin)
    s = np.where(s > 0, s, np.float32(1))
    zp = np.clip(qmin - np.round(lo / s), qmin, qmax).astype(np.float32)
  q = np.clip(np.round(x / s) + zp, qmin, qmax)
  return ((q - zp) * s).astype(np.float32), q, s, zp


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_bounds(bits):
  assert qz.int_bounds(bits, True) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
  assert qz.int_bounds(bits, False) == (0, 2 ** bits - 1)
  assert qz.lsq_bounds(bits, True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 9, 8.0, True])
def test_bad_bits_named(bits):
  with pytest.raises(ValueError, match="bits"):
    qz.int_fake_quant(jnp.ones(3), bits=bits)


@pytest.mark.parametrize("kwargs,word", [
    (dict(granularity="per_row"), "granularity"), (dict(rounding="floor"), "rounding"),
    (dict(ste="tanh"), "ste")])
def test_bad_options_named(kwargs, word):
  with pytest.raises(ValueError, match=f"unknown {word}.*valid"):
    qz.int_fake_quant(jnp.ones((2, 3)), **kwargs)


# Magnitudes >= 2^-10 (or 0): XLA:CPU flushes subnormal scales to zero, numpy does not.
ELEMENTS = st.one_of(st.just(0.0), st.floats(2**-10, 8, width=32),
                     st.floats(-8, -2**-10, width=32))
GRAN_AXIS = [("per_tensor", -1), ("per_channel", -1), ("per_channel", 0), ("per_channel", (0, 2)),
             ("per_token", -1), ("per_token", 1)]


# jitted with static options: one compilation per (shape, options) instead of one per op.
_int_scale = jax.jit(qz.int_scale, static_argnums=(1, 2, 3))
_int_quantize = jax.jit(qz.int_quantize, static_argnames=("bits", "symmetric"))
_int_fake_quant = jax.jit(qz.int_fake_quant, static_argnames=("bits", "symmetric", "granularity",
                                                              "axis"))
SHAPES_3D = st.sampled_from([(2, 3, 4), (1, 5, 2), (3, 1, 3)])  # few shapes: few compilations


@settings(max_examples=10, deadline=None)
@given(x=hnp.arrays(np.float32, SHAPES_3D, elements=ELEMENTS),
       bits=st.integers(2, 8), symmetric=st.booleans(),
       gran_axis=st.sampled_from(GRAN_AXIS))
def test_int_fake_quant_on_grid(x, bits, symmetric, gran_axis):
  granularity, axis = gran_axis
  axes = np_axes(x.ndim, granularity, axis)
  _, _, s_ref, zp_ref = np_int_fake_quant(x, bits, symmetric, axes)
  s, zp = (np.asarray(a) for a in _int_scale(jnp.asarray(x), bits, symmetric, axes))
  # XLA may divide by the constant qmax as a multiply by its reciprocal: 1 ulp apart at most.
  np.testing.assert_allclose(s, s_ref, rtol=2.5e-7)
  np.testing.assert_array_equal(zp, zp_ref)
  # Codes: integers in [qmin, qmax], round(x / s) + zp, clipped.
  qmin, qmax = np_bounds(bits, symmetric)
  q = np.asarray(_int_quantize(jnp.asarray(x), s, zp, bits=bits, symmetric=symmetric))
  np.testing.assert_array_equal(q, np.clip(np.round(x / s) + zp, qmin, qmax))
  assert np.all(q == np.round(q)) and q.min() >= qmin and q.max() <= qmax
  # Values: the grid point (q - zp) s (1 ulp of the product), nothing clipped at the amax scale.
  y = np.asarray(_int_fake_quant(jnp.asarray(x), bits=bits, symmetric=symmetric,
                                 granularity=granularity, axis=axis))
  np.testing.assert_allclose(y, (q - zp) * s, rtol=2.5e-7, atol=0)
  assert np.all(np.abs(y - x) <= 0.5 * s * (1 + 1e-5))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int_grid_exact_with_power_of_two_scale(bits):
  qmax = 2 ** (bits - 1) - 1
  x = RNG.uniform(-1, 1, (4, 6)).astype(np.float32) * qmax * 0.25
  x[:, 0] = qmax * 0.25  # amax / qmax = 0.25 exactly
  y = np.asarray(qz.int_fake_quant(jnp.asarray(x), bits=bits, granularity="per_token"))
  k = y / np.float32(0.25)
  np.testing.assert_array_equal(k, np.round(k))
  assert np.abs(k).max() == qmax
  np.testing.assert_array_equal(k, np.clip(np.round(x / np.float32(0.25)), -qmax, qmax))


def test_all_zero_slice_gives_zero():
  x = jnp.zeros((3, 4)).at[0].set(1.0)
  y = qz.int_fake_quant(x, bits=4, granularity="per_token")
  assert np.all(np.isfinite(y)) and np.all(np.asarray(y)[1:] == 0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ste", ["identity", "clipped"])
def test_int_ste_gradient(symmetric, ste):
  x = RNG.standard_normal((5, 7)).astype(np.float32) * 3
  w = RNG.standard_normal((5, 7)).astype(np.float32)
  bits, scale = 4, np.float32(0.25)  # clips |x| > ~1.75: plenty of clipped entries
  zp = np.float32(0 if symmetric else 8)
  f = lambda x: jnp.sum(w * qz.int_fake_quant_with_scale(x, scale, zp, bits=bits,
                                                         symmetric=symmetric, ste=ste))
  g = np.asarray(jax.grad(f)(jnp.asarray(x)))
  qmin, qmax = np_bounds(bits, symmetric)
  v = x / scale + zp
  inside = (v >= qmin - 0.5) & (v <= qmax + 0.5)  # saturated beyond half a step
  assert 0 < inside.sum() < inside.size
  np.testing.assert_array_equal(g, w if ste == "identity" else np.where(inside, w, 0))


def test_data_scale_gets_no_gradient():
  """The scale from max|x| is a constant: the gradient is the STE's alone (identity)."""
  x = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
  g = jax.grad(lambda x: jnp.sum(qz.int_fake_quant(x, bits=3, granularity="per_token")))(x)
  np.testing.assert_array_equal(g, np.ones((3, 4), np.float32))


def test_stochastic_rounding_unbiased_and_on_grid():
  s, bits = np.float32(0.125), 8  # power-of-two scale: grid check is exact
  x = (np.arange(-8, 8) + np.float32(0.3)).astype(np.float32) * s  # 0.3 of a step off the grid
  x[0] = 127 * s  # amax / 127 = s
  keys = jax.random.split(KEY, 4000)
  f = jax.jit(jax.vmap(lambda k: qz.int_fake_quant(jnp.asarray(x), bits=bits, rounding="stochastic",
                                                  key=k)))
  y = np.asarray(f(keys))
  k = y / s
  np.testing.assert_array_equal(k, np.round(k))  # on the grid
  np.testing.assert_array_equal(np.floor(x / s) <= k, True)  # floor or ceil only
  np.testing.assert_array_equal(k <= np.ceil(x / s), True)
  # unbiased: the mean is x (nearest rounding would be 0.3 s off); std of the mean < 0.01 s
  np.testing.assert_allclose(y.mean(0), x, atol=0.05 * s)
  assert 0.2 < (k[:, 1:] == np.ceil(x[1:] / s)).mean() < 0.4  # P(up) = 0.3


def test_stochastic_needs_key():
  with pytest.raises(ValueError, match="key"):
    qz.int_fake_quant(jnp.ones(3), rounding="stochastic")


# ---------------------------------------------------------------------------------------------
# LSQ


def np_lsq_grads(x, s, w, qn, qp):
  """Esser et al. 2020, eq. 3, summed against the upstream gradient w."""
  v = x / s
  dstep = np.where(v <= qn, qn, np.where(v >= qp, qp, np.round(v) - v))
  dx = np.where((v > qn) & (v < qp), w, 0)
  return dx, (w * dstep)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, False), (4, True), (8, True)])
def test_lsq_forward_and_gradients(bits, signed):
  qn, qp = qz.lsq_bounds(bits, signed)
  x = RNG.standard_normal((6, 5)).astype(np.float32)
  w = RNG.standard_normal((6, 5)).astype(np.float32)
  s = np.float32(1.5 / qp)  # clips some entries on both sides
  y = qz.lsq_fake_quant(jnp.asarray(x), s, bits=bits, signed=signed, grad_scale=1.0)
  np.testing.assert_allclose(y, np.round(np.clip(x / s, qn, qp)) * s, rtol=1e-6)
  f = lambda x, s: jnp.sum(w * qz.lsq_fake_quant(x, s, bits=bits, signed=signed, grad_scale=1.0))
  dx, ds = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(s))
  ref_dx, ref_ds = np_lsq_grads(x.astype(np.float64), np.float64(s), w, qn, qp)
  np.testing.assert_array_equal(dx, ref_dx)
  np.testing.assert_allclose(ds, ref_ds.sum(), rtol=1e-4, atol=1e-5)


def test_lsq_default_gradient_scale():
  """g = 1 / sqrt(N Q_P) (Esser et al. 2020, Sec. 2.2) multiplies the step gradient only."""
  bits, x = 4, jnp.asarray(RNG.standard_normal((8, 3)), jnp.float32)
  s = qz.lsq_init_step(x, bits)
  np.testing.assert_allclose(s, 2 * np.abs(np.asarray(x)).mean() / math.sqrt(7), rtol=1e-6)
  f = lambda s, gs: jnp.sum(jnp.cos(qz.lsq_fake_quant(x, s, bits=bits, grad_scale=gs)))
  plain = jax.grad(f)(s, 1.0)
  assert abs(float(plain)) > 1e-3
  np.testing.assert_allclose(jax.grad(f)(s, None), plain / math.sqrt(24 * 7), rtol=1e-5)
  gx = jax.grad(lambda x, gs: jnp.sum(qz.lsq_fake_quant(x, s, bits=bits, grad_scale=gs)))
  np.testing.assert_array_equal(gx(x, None), gx(x, 1.0))


def test_lsq_step_gradient_matches_finite_difference_where_valid():
  """Where every value is clipped the true (non-STE) loss is smooth in s and eq. 3 is exact."""
  bits, qn, qp = 3, -4, 3
  x = np.concatenate([RNG.uniform(2.0, 3.0, 5), RNG.uniform(-3.0, -2.0, 5)]).astype(np.float64)
  w = RNG.standard_normal(10)
  s = 0.4  # |x| / s >= 5 > Q: all clipped
  loss = lambda s: np.sum(w * np.round(np.clip(x / s, qn, qp)) * s)
  fd = (loss(s + 1e-4) - loss(s - 1e-4)) / 2e-4
  f = lambda s: jnp.sum(jnp.asarray(w, jnp.float32) * qz.lsq_fake_quant(
      jnp.asarray(x, jnp.float32), s, bits=bits, grad_scale=1.0))
  np.testing.assert_allclose(jax.grad(f)(jnp.float32(s)), fd, rtol=1e-4)


def test_lsq_per_channel_step():
  bits, qn, qp = 4, -8, 7
  x = RNG.standard_normal((5, 3)).astype(np.float32)
  w = RNG.standard_normal((5, 3)).astype(np.float32)
  s = np.array([[0.1, 0.2, 0.3]], np.float32)
  f = lambda s: jnp.sum(w * qz.lsq_fake_quant(jnp.asarray(x), s, bits=bits))
  ds = jax.grad(f)(jnp.asarray(s))
  _, ref = np_lsq_grads(x.astype(np.float64), s.astype(np.float64), w, qn, qp)
  assert ds.shape == (1, 3)
  np.testing.assert_allclose(ds, ref.sum(0, keepdims=True) / math.sqrt(5 * qp), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Binary and ternary


@pytest.mark.parametrize("ste", ["identity", "clipped"])
def test_binary_connect(ste):
  x = RNG.standard_normal((4, 6)).astype(np.float32) * 1.5
  x[0, 0] = 0.0
  w = RNG.standard_normal((4, 6)).astype(np.float32)
  y = qz.binary_fake_quant(jnp.asarray(x), scaled=False, ste=ste)
  np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0))
  g = jax.grad(lambda x: jnp.sum(w * qz.binary_fake_quant(x, scaled=False, ste=ste)))(x)
  mask = np.abs(x) <= 1
  assert 0 < mask.sum() < mask.size
  np.testing.assert_array_equal(g, w if ste == "identity" else np.where(mask, w, 0))


@pytest.mark.parametrize("shape,axis", [((5, 4), -1), ((3, 3, 2, 4), -1), ((4, 5), 0)])
def test_xnor_scale_per_output_channel(shape, axis):
  x = RNG.standard_normal(shape).astype(np.float32)
  y = np.asarray(qz.binary_fake_quant(jnp.asarray(x), axis=axis))
  red = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
  alpha = np.mean(np.abs(x), axis=red, keepdims=True)
  np.testing.assert_allclose(y, alpha * np.where(x >= 0, 1, -1), rtol=1e-6)
  y_t = np.asarray(qz.binary_fake_quant(jnp.asarray(x), granularity="per_tensor"))
  np.testing.assert_allclose(np.abs(y_t), np.mean(np.abs(x)), rtol=1e-6)


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_ternary_matches_twn(granularity):
  x = RNG.standard_normal((8, 3)).astype(np.float32)
  y = np.asarray(qz.ternary_fake_quant(jnp.asarray(x), granularity=granularity))
  red = 0 if granularity == "per_channel" else None
  a = np.abs(x)
  delta = 0.7 * a.mean(axis=red, keepdims=True)
  keep = a > delta
  alpha = (a * keep).sum(axis=red, keepdims=True) / keep.sum(axis=red, keepdims=True)
  np.testing.assert_allclose(y, alpha * np.sign(x) * keep, rtol=1e-6)
  assert 0 < keep.sum() < keep.size  # some zeros, some +-alpha
  for c in range(3):  # three levels per channel
    assert len(np.unique(np.round(y[:, c], 6))) <= 3
  g = jax.grad(lambda x: jnp.sum(qz.ternary_fake_quant(x, granularity=granularity) ** 2 / 2))(x)
  np.testing.assert_allclose(g, y, rtol=1e-6)  # identity STE: dL/dx = dL/dy = y


def test_ternary_bad_threshold():
  with pytest.raises(ValueError, match="threshold"):
    qz.ternary_fake_quant(jnp.ones(3), threshold=0.0)


def test_quantizers_jit_and_dtype():
  x = jnp.asarray(RNG.standard_normal((3, 4)), jnp.bfloat16)
  for f in (lambda x: qz.int_fake_quant(x, bits=8), qz.binary_fake_quant, qz.ternary_fake_quant):
    y = jax.jit(f)(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 4)
    assert jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32)))(x).dtype == jnp.bfloat16
