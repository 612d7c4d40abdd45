"""pallas_kernels.depthwise_conv: the "xla" shift-and-add path and the Pallas kernels of both
targets ("tpu" and "gpu" layouts, in interpret mode) against the grouped-convolution reference
(values and dx, dw through jax.vjp with a random cotangent), the "xla" path against independent
numpy loops (which pins the tap order), causality, argument errors and refusals, and dispatch on
CPU. Lowering for TPU / GPU is tests/pallas_kernels/depthwise_conv/test_lowering.py.

Tolerances: |x - ref| <= tol * |ref| + tol * max|ref| elementwise, tol = 1e-5 for float32 and
2e-2 for bfloat16 (both sides compute in float32 from the same bf16 inputs; the outputs and
gradients are rounded to bf16).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.depthwise_conv import api, pallas, reference
from tests.pallas_kernels.tolerances import TOL, assert_close, value_and_grads

TARGETS = ("tpu", "gpu")

# Shapes are chosen so that lengths / heights are not multiples of the blocks (partial last
# tile), some channel counts are not multiples of block_c (padded channels, two channel blocks
# at C = 130), kernels of size 1 (no halo), longer than the input, and 31 taps. The blocks
# given are valid on both targets (TPU: block_l a multiple of 8 / 16 for bf16, block_c a
# multiple of 128 or >= C; GPU: powers of two; block_h is the TPU's only).
CASES_1D = [
    dict(B=2, L=21, C=12, K=4, block_l=8),
    dict(B=1, L=37, C=130, K=7, causal=False, block_l=16, block_c=128),
    dict(B=2, L=19, C=3, K=1, block_l=8),
    dict(B=1, L=5, C=4, K=12),
    dict(B=1, L=45, C=8, K=31, block_l=16),
    dict(B=2, L=29, C=12, K=4, block_l=16, dtype=jnp.bfloat16),
    dict(B=1, L=26, C=6, K=6, causal=False, dtype=jnp.bfloat16),
]
CASES_2D = [
    dict(B=2, H=13, W=11, C=5, k=(7, 7), padding="SAME", block_h=6),  # ConvNeXt
    dict(B=1, H=16, W=12, C=3, k=(31, 31), padding="SAME"),  # RepLKNet, kernel > image
    dict(B=2, H=10, W=9, C=8, k=(3, 5), padding="VALID", block_h=4),
    dict(B=1, H=11, W=7, C=4, k=(4, 3), padding=((3, 0), (1, 2)), block_h=3),
    dict(B=1, H=9, W=10, C=130, k=(9, 9), padding="SAME", block_h=4, block_c=128,
         dtype=jnp.bfloat16),
    dict(B=2, H=9, W=12, C=5, k=(1, 5), padding="SAME", block_h=4, dtype=jnp.bfloat16),
]


def _ids(cases):
  return ["-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) for c in cases]


def _normal(rng, shape, dtype):
  return jnp.asarray(rng.normal(size=shape), dtype)


def _check_against_reference(implementations, ref_fn, x, w, dy, tol, what):
  """Every implementations[name](x, w): values and (dx, dw) as ref_fn's."""
  expected = value_and_grads(ref_fn, x, w, dy)
  for name, fn in implementations.items():
    actual = value_and_grads(fn, x, w, dy)
    for part, a, e in zip(("y", "dx", "dw"), actual, expected):
      assert a.shape == e.shape and a.dtype == e.dtype, (name, part)
      assert_close(a, e, tol, f"{name} {part} {what}")


@pytest.mark.parametrize("case", CASES_1D, ids=_ids(CASES_1D))
def test_conv1d_implementations_match_reference_values_and_gradients(case):
  rng = np.random.default_rng(len(str(case)))
  dtype = case.get("dtype", jnp.float32)
  B, L, C, K = case["B"], case["L"], case["C"], case["K"]
  x, w, dy = _normal(rng, (B, L, C), dtype), _normal(rng, (K, C), dtype), _normal(
      rng, (B, L, C), dtype)
  blocks = {k: case[k] for k in ("block_l", "block_c") if k in case}
  causal = case.get("causal", True)
  fns = {"xla": lambda x, w: pallas_kernels.depthwise_conv1d(x, w, causal=causal,
                                                               implementation="xla")}
  for target in TARGETS:
    fns[target] = lambda x, w, t=target: pallas.depthwise_conv1d(
        x, w, causal=causal, target=t, interpret=True, **blocks)
  _check_against_reference(fns, lambda x, w: reference.depthwise_conv1d(x, w, causal=causal),
                           x, w, dy, TOL[dtype], str(case))


@pytest.mark.parametrize("case", CASES_2D, ids=_ids(CASES_2D))
def test_conv2d_implementations_match_reference_values_and_gradients(case):
  rng = np.random.default_rng(len(str(case)))
  dtype = case.get("dtype", jnp.float32)
  B, H, W, C = case["B"], case["H"], case["W"], case["C"]
  x, w = _normal(rng, (B, H, W, C), dtype), _normal(rng, (*case["k"], C), dtype)
  pads = api._explicit_padding(case["padding"], case["k"])
  fns = {"xla": lambda x, w: pallas_kernels.depthwise_conv2d(x, w, padding=case["padding"],
                                                               implementation="xla")}
  for target in TARGETS:
    blocks = {k: case[k] for k in ("block_h", "block_c") if k in case}
    fns[target] = lambda x, w, t=target, b=blocks: pallas.depthwise_conv2d(
        x, w, padding=pads, target=t, interpret=True, **b)
  dy = _normal(rng, jax.eval_shape(fns["xla"], x, w).shape, dtype)
  _check_against_reference(fns, lambda x, w: reference.depthwise_conv2d(x, w, padding=pads),
                           x, w, dy, TOL[dtype], str(case))


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
    (dict(block_c=0), "block_c must be None or a positive int"),
    # refusals of the kernel (interpreted with the TPU's layout on a CPU host)
    (dict(block_l=12, implementation="pallas_interpret"),
     "block_l=12: Pallas on TPU needs a multiple of 8"),
    (dict(block_l=8, implementation="pallas_interpret", x=jnp.zeros((1, 8, 4), jnp.bfloat16),
          w=jnp.zeros((3, 4), jnp.bfloat16)), "block_l=8: Pallas on TPU needs a multiple of 16"),
    (dict(x=jnp.zeros((1, 8, 200)), w=jnp.zeros((3, 200)), block_c=64,
          implementation="pallas_interpret"), "block_c=64: Pallas on TPU needs a multiple of 128"),
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
    (dict(block_h=-1), "block_h must be None or a positive int"),
    (dict(x=jnp.zeros((1, 8, 8, 200)), w=jnp.zeros((3, 3, 200)), block_c=100,
          implementation="pallas_interpret"), "block_c=100: Pallas on TPU needs a multiple"),
])
def test_conv2d_invalid_arguments_raise_clear_errors(overrides, match):
  kw = dict(x=jnp.zeros((1, 8, 8, 4)), w=jnp.zeros((3, 3, 4)))
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.depthwise_conv2d(kw.pop("x"), kw.pop("w"), **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_l=24), "block_l=24: Triton needs a power of two"),
    (dict(block_c=48), "block_c=48: Triton needs a power of two"),
])
def test_gpu_kernel_refuses_blocks_triton_cannot_take(kwargs, match):
  x, w = jnp.zeros((1, 40, 48)), jnp.zeros((4, 48))
  assert pallas.unsupported_reason(x.shape, w.shape, x.dtype, pads=((3, 0),), target="tpu",
                                   **{"block": kwargs.get("block_l"),
                                      "block_c": kwargs.get("block_c")}) is None
  with pytest.raises(ValueError, match=match):
    pallas.depthwise_conv1d(x, w, target="gpu", interpret=True, **kwargs)


@pytest.mark.parametrize("target", TARGETS)
def test_huge_inputs_are_refused_with_a_reason(target):
  """TPU: a 31x31 window over a 65536-wide image exceeds VMEM even at one row per tile; GPU:
  past int32 element offsets. Checked on shapes only (nothing is allocated)."""
  x, w = (1, 40, 2**16, 1024), (31, 31, 1024)
  reason = pallas.unsupported_reason(x, w, jnp.float32, pads=((15, 15),) * 2, block=None,
                                     block_c=None, target=target)
  assert reason and ("VMEM" if target == "tpu" else "int32") in reason, reason


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="dispatch on a CPU host")
def test_cpu_runs_xla_for_none_and_refuses_compiled_pallas():
  assert api.default_implementation() == "xla"
  rng = np.random.default_rng(0)
  x, w = _normal(rng, (1, 6, 5, 2), jnp.float32), _normal(rng, (3, 3, 2), jnp.float32)
  with pytest.raises(ValueError, match="compiles the kernels for a GPU or TPU"):
    pallas_kernels.depthwise_conv2d(x, w, implementation="pallas")
  out = jax.jit(lambda x, w: pallas_kernels.depthwise_conv2d(x, w))(x, w)
  np.testing.assert_array_equal(out, pallas_kernels.depthwise_conv2d(x, w, implementation="xla"))
