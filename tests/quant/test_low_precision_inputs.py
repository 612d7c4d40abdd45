"""Quantizers of bfloat16 inputs compute in float32 (issue 14, item 6): scales, rounding
(stochastic included) and x / scale in float32, the result cast to the input dtype at the end;
gradients come back in the input dtype. References: numpy in float32 / float64, and each
quantizer applied to the same values upcast to float32."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxlab.quant import config as qc, formats, fp8, ptq, quantizers as qz

KEY = jax.random.key(0, impl="rbg")  # rbg: threefry bits are slow to compile on CPU
BF16 = jnp.bfloat16
RNG = np.random.default_rng(0)

# Values exactly representable in bfloat16 (8 significant bits) whose fractional part bfloat16
# arithmetic would round away: floor(v + u) in bf16 rounds v + u to a multiple of v's ulp.
SR_VALUES = np.array([100.5, 37.25, -12.75, 3.375, 0.6015625, -99.5], np.float64)


def _bf16_normal(shape, row_scale=True):
  x = RNG.standard_normal(shape) * (RNG.uniform(0.01, 100.0, (shape[0], 1)) if row_scale else 1)
  return jnp.asarray(x, BF16)


@pytest.mark.parametrize("via", ["round_values", "int_fake_quant_with_scale"])
def test_stochastic_rounding_of_bf16_inputs_is_unbiased(via):
  """mean over n independent draws of SR(v) is v within 5 standard errors, sqrt(f (1 - f) / n)
  for fractional part f; bf16 arithmetic would give e.g. 100.75 for 100.5 (~70 SE off)."""
  assert np.array_equal(SR_VALUES.astype(ml_dtypes.bfloat16).astype(np.float64), SR_VALUES)
  n = 20000
  x = jnp.asarray(np.repeat(SR_VALUES[:, None], n, axis=1), BF16)
  if via == "round_values":
    f = jax.jit(lambda x, k: qz.round_values(x, "stochastic", k))
  else:  # scale 1, 8 bits: the codes are the rounded values themselves
    f = jax.jit(lambda x, k: qz.int_fake_quant_with_scale(x, 1.0, bits=8, rounding="stochastic",
                                                          key=k))
  y = f(x, KEY)
  assert y.dtype == BF16
  y = np.asarray(y, np.float64)
  np.testing.assert_array_equal(np.abs(y - np.floor(SR_VALUES)[:, None]) <= 1, True)
  np.testing.assert_array_equal(y, np.round(y))  # integers
  frac = SR_VALUES - np.floor(SR_VALUES)
  stderr = np.sqrt(frac * (1 - frac) / n)
  err = np.abs(y.mean(axis=1) - SR_VALUES)
  assert np.all(err < 5 * stderr), f"|mean - v| / stderr = {err / stderr}"


def test_int8_codes_of_bf16_inputs_are_exact_rounding():
  """int_scale and int_quantize of bf16 inputs: the scale is float32 max|x| / 127 (1 ulp: XLA may
  multiply by 1/127) and every code is round-half-even(x / scale) of the exact (float64)
  quotient; the fake-quant value is bf16(code * scale). bf16 arithmetic puts ~10% of the codes
  one off."""
  x = _bf16_normal((16, 256))
  axes = (1,)  # per token
  scale, zero_point = jax.jit(qz.int_scale, static_argnums=(1, 2, 3))(x, 8, True, axes)
  assert scale.dtype == jnp.float32 and zero_point.dtype == jnp.float32
  x64 = np.asarray(x, np.float64)
  want_scale = np.max(np.abs(x64), axis=1, keepdims=True).astype(np.float32) / np.float32(127)
  np.testing.assert_allclose(scale, want_scale, rtol=2 ** -23)
  s64 = np.asarray(scale, np.float64)
  codes = jax.jit(qz.int_quantize, static_argnames=("bits",))(x, scale, bits=8)
  want = np.clip(np.round(x64 / s64), -127, 127)
  np.testing.assert_array_equal(np.asarray(codes, np.float64), want)
  y = jax.jit(lambda x: qz.int_fake_quant(x, bits=8, granularity="per_token"))(x)
  assert y.dtype == BF16
  np.testing.assert_array_equal(np.asarray(y), (want * s64).astype(np.float32).astype(BF16))


# Every format, on bf16 x and on the same values upcast to float32: the bf16 result is the float32
# result cast to bf16 (bitwise), and so is the input gradient (the STE runs on x's dtype).
def _lsq(x):
  return qz.lsq_fake_quant(x, jnp.float32(0.0371), bits=4)


QUANTIZERS = {
    "int8_per_token": lambda x: qz.int_fake_quant(x, bits=8, granularity="per_token"),
    "int4_affine_clipped": lambda x: qz.int_fake_quant(x, bits=4, symmetric=False,
                                                       granularity="per_channel", ste="clipped"),
    "int4_given_scale_clipped": lambda x: qz.int_fake_quant_with_scale(
        x, jnp.float32(0.0371), bits=4, ste="clipped"),
    "int8_stochastic": lambda x: qz.int_fake_quant(x, bits=8, rounding="stochastic", key=KEY),
    "lsq": _lsq,
    "binary": lambda x: qz.binary_fake_quant(x, ste="clipped"),
    "ternary": qz.ternary_fake_quant,
    "fp8_e4m3_current": lambda x: fp8.fp8_fake_quant_current(x, "e4m3", granularity="per_channel",
                                                             ste="clipped"),
    "fp8_e5m2_given_scale": lambda x: fp8.fp8_fake_quant(x, jnp.float32(3e-4), "e5m2",
                                                         ste="clipped"),
    "ptq_qscale": lambda x: ptq.compute_scale(x.astype(jnp.float32), bits=4).fake_quant(x),
}


def _near_bounds(shape):
  """bf16 values of magnitude ~0.3 (|x| / 0.0371 crosses the 4-bit grid's ends, so clipped STEs
  and LSQ clip some entries), with a slice hitting the half-step boundaries 7.5 and -8.5 steps
  where a bound rounded to bf16 would flip the STE mask."""
  x = RNG.uniform(-0.35, 0.35, shape)
  s = np.float64(np.float32(0.0371))
  x[0, :6] = np.array([7.5, -7.5, -8.5, 7.49, -8.49, 7.51]) * s
  return jnp.asarray(x, BF16)


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_bf16_input_equals_float32_compute_cast_back(name):
  f = QUANTIZERS[name]
  x = _near_bounds((6, 40))
  g = jnp.asarray(RNG.standard_normal((6, 40)), BF16)

  @jax.jit
  def both(x, g):
    out = []
    for xi, gi in ((x, g), (x.astype(jnp.float32), g.astype(jnp.float32))):
      y, vjp = jax.vjp(f, xi)
      out.append((y, *vjp(gi)))
    return out

  (y, dx), (y32, dx32) = both(x, g)
  assert y.dtype == BF16 and dx.dtype == BF16 and y32.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y32.astype(BF16)), err_msg=name)
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx32.astype(BF16)), err_msg=name)


def test_lsq_step_keeps_its_dtype_and_gets_the_float32_gradient():
  """A float32 step with bf16 activations: its gradient (eq. 3) is the float32 one."""
  x = _near_bounds((6, 40))
  g = jnp.asarray(RNG.standard_normal((6, 40)), BF16)
  step = jnp.float32(0.0371)

  @jax.jit
  def grads(x, g, step):
    return [jax.vjp(lambda s: qz.lsq_fake_quant(xi, s, bits=4), step)[1](gi)[0]
            for xi, gi in ((x, g), (x.astype(jnp.float32), g.astype(jnp.float32)))]

  ds, ds32 = grads(x, g, step)
  assert ds.dtype == jnp.float32
  np.testing.assert_allclose(ds, ds32, rtol=1e-6)


def test_quantized_dot_general_bf16_gradient_quantized_in_float32():
  """A stochastic int8 gradient format on a bf16 matmul: the quantized cotangent equals the
  float32 computation (same key) cast to bf16."""
  cfg = qc.QuantConfig(gradient=formats.IntFormat(bits=8, rounding="stochastic"))
  dot = qc.quantized_dot_general(cfg)
  dn = (((1,), (0,)), ((), ()))
  x = jnp.asarray(RNG.standard_normal((8, 16)), BF16)
  w = jnp.eye(16, dtype=BF16)  # dx = quantized g @ w^T = quantized g
  g = jnp.asarray(RNG.standard_normal((8, 16)) * 37, BF16)

  @jax.jit
  def dx(x, w, g):
    return jax.vjp(lambda x: dot(x, w, dn, rng=KEY), x)[1](g)[0]

  gq = qz.int_fake_quant(g.astype(jnp.float32), bits=8, rounding="stochastic",
                         key=jax.random.split(KEY, 3)[2])
  np.testing.assert_array_equal(np.asarray(dx(x, w, g)), np.asarray(gq.astype(BF16)))


def test_quantized_tensor_dequantizes_in_float32():
  """QuantizedTensor.dequantize(bf16) = bf16(q * scale computed in float32)."""
  x = jnp.asarray(RNG.standard_normal((32, 8)) * 3, jnp.float32)
  qs = ptq.compute_scale(x, granularity="per_channel", symmetric=False)
  qt = ptq.quantize_tensor(x, qs)
  want = qt.dequantize(jnp.float32).astype(BF16)
  np.testing.assert_array_equal(np.asarray(qt.dequantize(BF16)), np.asarray(want))
