"""pallas_kernels.depthwise_conv: the "xla" shift-and-add path and the Pallas kernels (interpret
mode) against the grouped-convolution reference (values and dx, dw through jax.vjp with a random
cotangent), the "xla" path against independent numpy loops (which pins the tap order),
causality, argument errors and the CPU fallback.

Tolerances: |x - ref| <= tol * |ref| + tol * max|ref| elementwise, tol = 1e-5 for float32 and
2e-2 for bfloat16 (both sides compute in float32 from the same bf16 inputs; the outputs and
gradients are rounded to bf16).
"""

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.depthwise_conv import api, reference
from tests.pallas_kernels.tolerances import TOL, assert_close, value_and_grads


# Shapes are chosen so that lengths / heights are not multiples of the blocks (partial last
# tile), some channel counts are not multiples of block_c (padded channels), and the halo
# logic is exercised (kernel size 1: no halo; kernels longer than the input).
CASES_1D = [
    dict(B=2, L=21, C=12, K=4, block_l=8, block_c=8),
    dict(B=1, L=37, C=5, K=7, causal=False, block_l=16),
    dict(B=2, L=19, C=3, K=1, block_l=8),
    dict(B=1, L=5, C=4, K=12, block_l=16),
    dict(B=2, L=29, C=12, K=4, block_l=8, block_c=8, dtype=jnp.bfloat16),
    dict(B=1, L=26, C=6, K=6, causal=False, block_l=16, dtype=jnp.bfloat16),
]
CASES_2D = [
    dict(B=2, H=13, W=11, C=5, k=(7, 7), padding="SAME", block_h=6, block_c=4),  # ConvNeXt
    dict(B=1, H=20, W=18, C=3, k=(31, 31), padding="SAME"),  # RepLKNet, kernel > image
    dict(B=2, H=10, W=9, C=8, k=(3, 5), padding="VALID", block_h=4),
    dict(B=1, H=11, W=7, C=4, k=(4, 3), padding=((3, 0), (1, 2)), block_h=3),
    dict(B=1, H=17, W=15, C=6, k=(9, 9), padding="SAME", block_h=8, block_c=4,
         dtype=jnp.bfloat16),
    dict(B=2, H=9, W=12, C=5, k=(1, 5), padding="SAME", block_h=4, dtype=jnp.bfloat16),
]


def _ids(cases):
  return ["-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) for c in cases]


def _normal(rng, shape, dtype):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _check_against_reference(fn, ref_fn, blocks, x, w, dy, tol, what):
  expected = value_and_grads(ref_fn, x, w, dy)
  for impl, kw in (("xla", {}), ("pallas_interpret", blocks)):
    actual = value_and_grads(lambda x, w: fn(x, w, implementation=impl, **kw), x, w, dy)
    for name, a, e in zip(("y", "dx", "dw"), actual, expected):
      assert a.shape == e.shape and a.dtype == e.dtype, name
      assert_close(a, e, tol, f"{impl} {name} {what}")


@pytest.mark.parametrize("case", CASES_1D, ids=_ids(CASES_1D))
def test_conv1d_implementations_match_reference_values_and_gradients(case):
  rng = np.random.default_rng(len(str(case)))
  dtype = case.get("dtype", jnp.float32)
  B, L, C, K = case["B"], case["L"], case["C"], case["K"]
  x, w, dy = _normal(rng, (B, L, C), dtype), _normal(rng, (K, C), dtype), _normal(
      rng, (B, L, C), dtype)
  blocks = {k: case[k] for k in ("block_l", "block_c") if k in case}
  causal = case.get("causal", True)
  _check_against_reference(
      lambda x, w, **kw: pallas_kernels.depthwise_conv1d(x, w, causal=causal, **kw),
      lambda x, w: reference.depthwise_conv1d(x, w, causal=causal), blocks, x, w, dy, TOL[dtype],
      str(case))


@pytest.mark.parametrize("case", CASES_2D, ids=_ids(CASES_2D))
def test_conv2d_implementations_match_reference_values_and_gradients(case):
  rng = np.random.default_rng(len(str(case)))
  dtype = case.get("dtype", jnp.float32)
  B, H, W, C = case["B"], case["H"], case["W"], case["C"]
  x, w = _normal(rng, (B, H, W, C), dtype), _normal(rng, (*case["k"], C), dtype)
  fn = lambda x, w, **kw: pallas_kernels.depthwise_conv2d(x, w, padding=case["padding"], **kw)
  dy = _normal(rng, jax.eval_shape(lambda: fn(x, w, implementation="xla")).shape, dtype)
  blocks = {k: case[k] for k in ("block_h", "block_c") if k in case}
  pads = api._explicit_padding(case["padding"], case["k"])
  _check_against_reference(fn, lambda x, w: reference.depthwise_conv2d(x, w, padding=pads),
                           blocks, x, w, dy, TOL[dtype], str(case))


def _numpy_conv1d(x, w, causal):
  """float64 loops of the docstring formula: y[t] = sum_k w[k] x[t + shift - k]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  B, L, C = x.shape
  K = w.shape[0]
  shift = 0 if causal else K // 2
  y = np.zeros_like(x)
  for b, t, k in itertools.product(range(B), range(L), range(K)):
    s = t + shift - k
    if 0 <= s < L:
      y[b, t] += w[k] * x[b, s]
  return y


def _numpy_conv2d(x, w, pads):
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  (top, bottom), (left, right) = pads
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = w.shape[:2]
  Ho, Wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  y = np.zeros((x.shape[0], Ho, Wo, x.shape[3]))
  for i, j in itertools.product(range(kh), range(kw)):
    y += w[i, j] * xp[:, i:i + Ho, j:j + Wo]
  return y


@pytest.mark.parametrize("causal", [True, False])
def test_xla_path_matches_numpy_loops_1d(causal):
  """Values of the "xla" path, and its gradients through the adjoint identity
  <y(x), dy> linear in x and w: dx = J^T dy, dw checked against numpy sums."""
  rng = np.random.default_rng(1)
  x, w, dy = rng.normal(size=(2, 9, 3)), rng.normal(size=(4, 3)), rng.normal(size=(2, 9, 3))
  f = lambda x, w: pallas_kernels.depthwise_conv1d(x, w, causal=causal, implementation="xla")
  y, dx, dw = value_and_grads(f, *(jnp.asarray(a, jnp.float32) for a in (x, w, dy)))
  np.testing.assert_allclose(y, _numpy_conv1d(x, w, causal), rtol=1e-5, atol=1e-5)
  shift = 0 if causal else 2
  want_dx, want_dw = np.zeros_like(x), np.zeros_like(w)
  for t, k in itertools.product(range(9), range(4)):
    s = t + shift - k
    if 0 <= s < 9:
      want_dx[:, s] += w[k] * dy[:, t]
      want_dw[k] += np.sum(dy[:, t] * x[:, s], axis=0)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding,pads", [("SAME", ((2, 2), (1, 2))), ("VALID", ((0, 0), (0, 0))),
                                          (((0, 4), (3, 1)), ((0, 4), (3, 1)))])
def test_xla_path_matches_numpy_loops_2d(padding, pads):
  rng = np.random.default_rng(2)
  x, w = rng.normal(size=(2, 8, 7, 3)), rng.normal(size=(5, 4, 3))
  y = pallas_kernels.depthwise_conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                      padding=padding, implementation="xla")
  np.testing.assert_allclose(y, _numpy_conv2d(x, w, pads), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["pallas_interpret", "xla"])
def test_conv1d_is_causal(implementation):
  """d y[t] / d x[s] is exactly 0 for s > t, and w[0] at s = t (the current sample)."""
  rng = np.random.default_rng(4)
  L, C, K = 11, 2, 3
  x, w = _normal(rng, (1, L, C), jnp.float32), _normal(rng, (K, C), jnp.float32)
  jac = jax.jit(jax.jacrev(lambda x: pallas_kernels.depthwise_conv1d(
      x, w, implementation=implementation, block_l=8)))(x)[0, :, :, 0]  # [t, c, s, c']
  for t in range(L):
    assert np.all(jac[t, :, t + 1:] == 0.0), t
    np.testing.assert_allclose(np.diagonal(jac[t, :, t]), w[0], rtol=1e-6)
  assert np.any(jac[L - 1, :, L - K] != 0.0)  # and it does reach K - 1 steps back


def _ok(**overrides):
  kw = dict(x=jnp.zeros((1, 8, 4)), w=jnp.zeros((3, 4)))
  kw.update(overrides)
  return kw


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="cuda"), "implementation must be None or one of"),
    (dict(x=jnp.zeros((8, 4))), r"x must be \[batch, length, channels\]"),
    (dict(w=jnp.zeros((3, 4, 1))), r"w must be \[taps, channels\]"),
    (dict(w=jnp.zeros((3, 5))), "must have x's 4 channels"),
    (dict(x=jnp.zeros((1, 0, 4))), "empty dimension"),
    (dict(x=jnp.zeros((1, 8, 4), jnp.float16), w=jnp.zeros((3, 4), jnp.float16)),
     "must both be float32 or both bfloat16"),
    (dict(w=jnp.zeros((3, 4), jnp.bfloat16)), "must both be float32 or both bfloat16"),
    (dict(causal="yes"), "causal must be a Python bool"),
    (dict(block_l=12, implementation="pallas_interpret"), "block_l=12: Pallas needs a multiple"),
    (dict(w=jnp.zeros((12, 4)), block_l=8, implementation="pallas_interpret"),
     r"block_l=8 must be >= kernel size - 1 = 11"),
    (dict(block_c=0), "block_c must be None or a positive int"),
])
def test_conv1d_invalid_arguments_raise_clear_errors(overrides, match):
  kw = _ok(**overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.depthwise_conv1d(kw.pop("x"), kw.pop("w"), **kw)


@pytest.mark.parametrize("overrides,match", [
    (dict(x=jnp.zeros((1, 8, 4))), r"x must be \[batch, height, width, channels\]"),
    (dict(w=jnp.zeros((3, 3, 5))), "must have x's 4 channels"),
    (dict(padding="FULL"), "padding must be 'SAME', 'VALID' or"),
    (dict(padding=((1, 1),)), "padding must be 'SAME', 'VALID' or"),
    (dict(padding=((1.0, 1), (1, 1))), "padding must be 'SAME', 'VALID' or"),
    (dict(padding=((3, 0), (1, 1))), r"height padding \(3, 0\) must lie in \[0, kernel size"),
    (dict(w=jnp.zeros((9, 3, 4)), padding="VALID"), "does not fit the padded input"),
    (dict(w=jnp.zeros((7, 7, 4)), block_h=5, implementation="pallas_interpret"),
     r"block_h=5 must be >= kernel size - 1 = 6"),
    (dict(block_h=-1), "block_h must be None or a positive int"),
])
def test_conv2d_invalid_arguments_raise_clear_errors(overrides, match):
  kw = dict(x=jnp.zeros((1, 8, 8, 4)), w=jnp.zeros((3, 3, 4)))
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.depthwise_conv2d(kw.pop("x"), kw.pop("w"), **kw)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fallback is CPU-specific")
def test_cpu_defaults_to_xla_and_compiled_pallas_falls_back_with_a_logged_reason(caplog):
  assert api.default_implementation() == "xla"
  rng = np.random.default_rng(0)
  x, w = _normal(rng, (1, 6, 5, 2), jnp.float32), _normal(rng, (3, 3, 2), jnp.float32)
  with caplog.at_level(logging.WARNING):
    out = jax.jit(lambda x, w: pallas_kernels.depthwise_conv2d(x, w, implementation="pallas"))(
        x, w)
  assert "falling back from 'pallas' to 'xla'" in caplog.text
  assert "need a TPU" in caplog.text
  np.testing.assert_allclose(out, pallas_kernels.depthwise_conv2d(x, w, implementation="xla"),
                             rtol=1e-6, atol=1e-6)
