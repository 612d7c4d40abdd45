"""pallas_kernels.long_conv: the "fft" path and the block-Toeplitz Pallas kernels (interpret
mode, laid out for the TPU and for the GPU) against the XLA reference (values and du, dk through
jax.vjp with a random cotangent), the "xla" path against independent numpy loops, causality, the
in-kernel Toeplitz construction, argument and dispatch errors, and the SGConv kernel
parameterisation. Lowering for the devices: test_lowering.py.

Tolerances: |x - ref| <= tol * |ref| + tol * max|ref| elementwise, tol = 1e-5 for float32 and
2e-2 for bfloat16 (every path computes in float32, or accumulates in float32, from the same
bf16 inputs; outputs and gradients are rounded to bf16).
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.long_convolution import api, pallas, sgconv
from tests.pallas_kernels.tolerances import TOL, assert_close, value_and_grads


# Lengths mostly not multiples of the block; channel counts not multiples of block_c.
FFT_CASES = [
    dict(B=2, L=21, C=3),
    dict(B=1, L=40, C=5),
    dict(B=2, L=19, C=3, k_len=7),  # kernel shorter than the sequence
    dict(B=2, L=33, C=3, dtype=jnp.bfloat16),
]
# Per target, block sizes its hardware takes (TPU: time blocks of 128 lanes; GPU: powers of two),
# several time blocks (the off-diagonal Toeplitz blocks and both backward kernels' loops), a
# short kernel, channel padding, bfloat16, and a single block.
KERNEL_CASES = {
    "tpu": [dict(B=2, L=300, C=3),
            dict(B=1, L=260, C=5, k_len=200, block_c=2, dtype=jnp.bfloat16),
            dict(B=3, L=20, C=2, block=128)],
    "gpu": [dict(B=2, L=21, C=3, block=8),
            dict(B=1, L=40, C=5, k_len=30, block=16, block_c=2),
            dict(B=2, L=33, C=3, block=8, block_c=2, dtype=jnp.bfloat16),
            dict(B=1, L=6, C=2)],
}


def _ids(cases):
  return ["-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) for c in cases]


def _make_case(case):
  rng = np.random.default_rng(len(str(case)))
  dtype = case.get("dtype", jnp.float32)
  B, L, C = case["B"], case["L"], case["C"]
  k_len = case.get("k_len", L)
  u = jnp.asarray(rng.normal(size=(B, L, C)), dtype)
  k = jnp.asarray(rng.normal(size=(k_len, C)) / np.sqrt(k_len), dtype)
  dy = jnp.asarray(rng.normal(size=(B, L, C)), dtype)
  return u, k, dy, TOL[dtype]


def _check_against_reference(fn, case, what):
  u, k, dy, tol = _make_case(case)
  expected = value_and_grads(lambda u, k: pallas_kernels.long_conv(
      u, k, implementation="xla"), u, k, dy)
  actual = value_and_grads(fn, u, k, dy)
  for name, a, e in zip(("y", "du", "dk"), actual, expected):
    assert a.shape == e.shape and a.dtype == e.dtype, name
    assert_close(a, e, tol, f"{name} {case} {what}")


@pytest.mark.parametrize("case", FFT_CASES, ids=_ids(FFT_CASES))
def test_fft_matches_reference_values_and_gradients(case):
  _check_against_reference(
      lambda u, k: pallas_kernels.long_conv(u, k, implementation="fft"), case, "fft")


@pytest.mark.parametrize("target,case", [(t, c) for t, cs in KERNEL_CASES.items() for c in cs],
                         ids=[f"{t}-{i}" for t, cs in KERNEL_CASES.items()
                              for i in _ids(cs)])
def test_kernels_match_reference_values_and_gradients(target, case):
  blocks = {name: case[name] for name in ("block", "block_c") if name in case}
  u_shape = (case["B"], case["L"], case["C"])
  dtype = case.get("dtype", jnp.float32)
  assert pallas.unsupported_reason(u_shape, dtype, target=target, **dict(
      dict(block=None, block_c=None), **blocks)) is None
  _check_against_reference(lambda u, k: pallas.long_conv(u, k, target=target, interpret=True,
                                                         **blocks), case, target)


@pytest.mark.parametrize("block", [8, 16])
def test_interpreter_toeplitz_equals_the_strided_roll_of_the_hardware_path(block):
  """toeplitz_rows: the strided lane roll (pltpu.roll, run here through its emulation) and the
  interpreter's static gather give the same out[r, s] = w[r, T - 1 - r + s]."""
  w = np.random.default_rng(block).normal(size=(block, 2 * block)).astype(np.float32)
  want = np.array([[w[r, block - 1 - r + s] for s in range(block)] for r in range(block)])
  for interpret in (False, True):
    got = jax.jit(lambda w: pallas.toeplitz_rows(w, block, interpret))(w)
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"interpret={interpret}")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret layout is backend-specific")
def test_api_pallas_interpret_runs_the_tpu_layout_kernels():
  """On a CPU host "pallas_interpret" runs the TPU layout: a time block of 64 (not 128 lanes) is
  refused with the reason, the default matches the reference."""
  case = dict(B=2, L=150, C=3)
  with pytest.raises(ValueError, match=r"\(tpu kernel\): block=64: the TPU needs a multiple of "
                     "128"):
    pallas_kernels.long_conv(*_make_case(case)[:2], implementation="pallas_interpret", block=64)
  _check_against_reference(lambda u, k: pallas_kernels.long_conv(
      u, k, implementation="pallas_interpret"), case, "api pallas_interpret")


def test_xla_path_matches_numpy_loops():
  """y[t] = sum_{s<=t} k[s] u[t-s], du[r] = sum_{t>=r} k[t-r] dy[t], dk[s] = sum_{b,t} dy[t]
  u[t-s], in float64 loops; the kernel is shorter than the sequence."""
  rng = np.random.default_rng(5)
  B, L, C, Lk = 2, 10, 3, 7
  u, k, dy = rng.normal(size=(B, L, C)), rng.normal(size=(Lk, C)), rng.normal(size=(B, L, C))
  y, du, dk = value_and_grads(lambda u, k: pallas_kernels.long_conv(u, k, implementation="xla"),
                               *(jnp.asarray(a, jnp.float32) for a in (u, k, dy)))
  want_y, want_du, want_dk = np.zeros_like(u), np.zeros_like(u), np.zeros_like(k)
  for t in range(L):
    for s in range(min(t + 1, Lk)):
      want_y[:, t] += k[s] * u[:, t - s]
      want_du[:, t - s] += k[s] * dy[:, t]
      want_dk[s] += np.sum(dy[:, t] * u[:, t - s], axis=0)
  for got, want in ((y, want_y), (du, want_du), (dk, want_dk)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["pallas_interpret", "xla", "fft"])
def test_is_causal(implementation):
  """d y[t] / d u[s] vanishes for s > t (exactly for the direct paths, to float32 round-off
  for the FFT) and equals k[0] at s = t."""
  rng = np.random.default_rng(6)
  L, C = 19, 2
  u = jnp.asarray(rng.normal(size=(1, L, C)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(L, C)), jnp.float32)
  jac = jax.jit(jax.jacrev(lambda u: pallas_kernels.long_conv(
      u, k, implementation=implementation)))(u)[0, :, :, 0]  # [t, c, s, c']
  jac = np.asarray(jac)
  bound = 1e-6 * np.abs(jac).max() if implementation == "fft" else 0.0
  for t in range(L):
    assert np.all(np.abs(jac[t, :, t + 1:]) <= bound), t
    np.testing.assert_allclose(np.diagonal(jac[t, :, t]), k[0], rtol=1e-5)
  np.testing.assert_allclose(np.diagonal(jac[L - 1, :, 0]), k[L - 1], rtol=1e-5)


def _ok(**overrides):
  kw = dict(u=jnp.zeros((1, 8, 3)), k=jnp.zeros((8, 3)))
  kw.update(overrides)
  return kw


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="toeplitz"), "implementation must be None or one of"),
    (dict(u=jnp.zeros((8, 3))), r"u must be \[batch, length, channels\]"),
    (dict(k=jnp.zeros((8, 3, 1))), r"k must be \[kernel_length, channels\]"),
    (dict(k=jnp.zeros((8, 4))), "must have u's 3 channels"),
    (dict(k=jnp.zeros((9, 3))), "kernel_length 9 exceeds the sequence length 8"),
    (dict(u=jnp.zeros((0, 8, 3))), "empty dimension"),
    (dict(k=jnp.zeros((8, 3), jnp.bfloat16)), "must both be float32 or both bfloat16"),
    (dict(block=12, implementation="pallas_interpret"),
     "block=12: the TPU needs a multiple of 128"),
    (dict(block=0), "block must be None or a positive int"),
    (dict(block_c=True), "block_c must be None or a positive int"),
])
def test_invalid_arguments_raise_clear_errors(overrides, match):
  kw = _ok(**overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.long_conv(kw.pop("u"), kw.pop("k"), **kw)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the default is backend-specific")
def test_cpu_defaults_to_fft_and_explicit_compiled_pallas_raises():
  assert api.default_implementation() == "fft" == api.default_implementation(64)
  rng = np.random.default_rng(0)
  u = jnp.asarray(rng.normal(size=(1, 12, 2)), jnp.float32)
  out = jax.jit(lambda u: pallas_kernels.long_conv(u, u[0]))(u)
  np.testing.assert_array_equal(out, pallas_kernels.long_conv(u, u[0], implementation="fft"))
  with pytest.raises(ValueError, match=r"implementation='pallas' compiles the kernels for a GPU "
                     r"or TPU.*\('fft', 'xla'\)"):
    pallas_kernels.long_conv(u, u[0], implementation="pallas")


# ----------------------------------------------------------------------------- SGConv


@pytest.mark.parametrize("length,kernel_dim,scales", [(100, 8, 4), (8, 8, 1), (9, 8, 2),
                                                      (4096, 32, 8), (16384, 32, 10)])
def test_sgconv_parameter_count_is_sublinear(length, kernel_dim, scales):
  """S = min{S : d (2^S - 1) >= L} scales of d parameters per channel: S d C parameters."""
  assert sgconv.num_scales(length, kernel_dim) == scales
  module = pallas_kernels.SGConvKernel(length=length, channels=3, kernel_dim=kernel_dim)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0))
  sizes = [x.size for x in jax.tree.leaves(params)]
  assert sum(sizes) == scales * kernel_dim * 3 and len(sizes) == scales
  assert jax.eval_shape(module.apply, params).shape == (length, 3)
  if length >= 4096:
    assert scales * kernel_dim <= length / 16  # sub-linear: 8 * 32 = 256 for 4096 taps


def test_sgconv_subkernels_decay_geometrically():
  """With every parameter 1 and no normalisation, sub-kernel i (lags [d(2^i - 1), d(2^{i+1}
  - 1))) is exactly alpha^i (interpolating a constant gives the constant); normalised, the
  kernel has unit norm per channel and keeps the same shape."""
  L, d, alpha = 45, 3, 0.6
  module = pallas_kernels.SGConvKernel(length=L, channels=2, kernel_dim=d, decay=alpha,
                                       normalize=False)
  params = jax.tree.map(jnp.ones_like, module.init(jax.random.PRNGKey(0)))
  k = np.asarray(module.apply(params))
  assert k.shape == (L, 2)
  for i in range(sgconv.num_scales(L, d)):
    segment = k[d * (2 ** i - 1):d * (2 ** (i + 1) - 1)]
    np.testing.assert_allclose(segment, alpha ** i, rtol=1e-6)
  normalized = np.asarray(module.clone(normalize=True).apply(params))
  np.testing.assert_allclose(np.linalg.norm(normalized, axis=0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(normalized, k / np.linalg.norm(k, axis=0), rtol=1e-5)


def test_sgconv_interpolation_matrix():
  """Half-pixel linear interpolation: identity at scale 1, rows are convex combinations, and a
  linear ramp maps to a linear ramp away from the clamped ends."""
  np.testing.assert_allclose(sgconv.interpolation_matrix(5, 5), np.eye(5))
  m = sgconv.interpolation_matrix(4, 16)
  np.testing.assert_allclose(m.sum(axis=1), 1.0)
  assert np.all(m >= 0)
  ramp = m @ np.arange(4.0)
  np.testing.assert_allclose(np.diff(ramp[2:-2]), 0.25)


def test_sgconv_kernel_trains_through_long_conv():
  """The kernel feeds long_conv under jit; gradients reach every scale's parameters."""
  L, C = 20, 3
  module = pallas_kernels.SGConvKernel(length=L, channels=C, kernel_dim=4)
  params = module.init(jax.random.PRNGKey(1))
  u = jax.random.normal(jax.random.PRNGKey(2), (2, L, C))

  @jax.jit
  def loss(params):
    return jnp.sum(pallas_kernels.long_conv(u, module.apply(params)) ** 2)

  grads = flax.core.unfreeze(jax.grad(loss)(params))["params"]
  assert sorted(grads) == [f"kernel_{i}" for i in range(sgconv.num_scales(L, 4))]
  for g in grads.values():
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


@pytest.mark.parametrize("overrides,match", [(dict(decay=0.0), "decay must lie in"),
                                             (dict(kernel_dim=0), "kernel_dim must be")])
def test_sgconv_invalid_attributes(overrides, match):
  module = pallas_kernels.SGConvKernel(**dict(dict(length=8, channels=2), **overrides))
  with pytest.raises(ValueError, match=match):
    module.init(jax.random.PRNGKey(0))
