"""pallas_kernels.fused_norm: the Pallas kernels (interpret mode, laid out for the TPU and for the
GPU) against the XLA reference for values and for dx, dscale, dbias (jax.vjp of the reference
with a random cotangent), the "xla" path's written-out backward against the same, its forward
against an independent float64 numpy formula, the
LayerNorm Scaling factor, the output statistics, and argument / dispatch errors. Lowering for
the devices: test_lowering.py.

Tolerances: |a - ref| <= tol * |ref| + tol * max|ref| elementwise, tol = 1e-5 for float32 and
2e-2 for bfloat16 (both sides compute in float32 from the same bf16 inputs; outputs and
gradients are rounded to bf16, a relative step of 2^-8).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.fused_norm import api, pallas, reference
from tests.pallas_kernels.tolerances import TOL, assert_close


def _random_cases(seed=0):
  """One case per (kind, dtype, LayerNorm Scaling on/off): random leading shape and feature dim
  (not always a power of two: the GPU layout masks the padded features), block_rows 8 or 16 (16
  for bfloat16: TPU sublanes), the row count never a multiple of the block (the last tile is
  partial) and sometimes below it (one tile); each kind runs with and without bias, with and
  without LayerNorm Scaling."""
  rng = np.random.default_rng(seed)
  cases = []
  for n, (kind, dtype, lns) in enumerate(itertools.product(
      api.KINDS, (jnp.float32, jnp.bfloat16), (False, True))):
    block_rows = 16 if dtype == jnp.bfloat16 else int(rng.choice([8, 16]))
    rows = int(rng.integers(3, 3 * block_rows))
    while rows % block_rows == 0:
      rows += 1
    lead = (rows,) if n % 3 == 0 else ((1, rows) if n % 3 == 1 else None)
    if lead is None:  # split the rows over two leading axes when they factor
      d = next((d for d in (2, 3, 5) if rows % d == 0), 1)
      lead = (d, rows // d)
    features = int(rng.choice([16, 40, 72, 128]))
    cases.append(dict(kind=kind, dtype=dtype, shape=(*lead, features),
                      layer_index=int(rng.integers(2, 33)) if lns else None,
                      bias=n in (0, 3, 5, 6), block_rows=block_rows,
                      eps=float(rng.choice([1e-6, 1e-5]))))
  return cases


CASES = _random_cases()


def _ids(cases):
  return ["-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) for c in cases]


def _inputs(case, seed):
  rng = np.random.default_rng(seed)
  dtype, shape = case["dtype"], case["shape"]
  D = shape[-1]
  x = jnp.asarray(rng.normal(size=shape) * 2.0 + 0.5, dtype)  # non-zero mean: LN subtracts it
  scale = jnp.asarray(1.0 + 0.5 * rng.normal(size=D), dtype)
  bias = jnp.asarray(rng.normal(size=D), dtype) if case.get("bias") else None
  dy = jnp.asarray(rng.normal(size=shape), dtype)
  return x, scale, bias, dy


def _run_once(fn, *args):
  """fn jit-compiled as one program without XLA's backend optimisations (these tiny programs run
  once, so compile time dominates), then run on args."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _assert_matches_reference(fn, case, x, scale, bias, dy):
  """fn(x, scale, bias)'s y, dx, dscale, dbias (jax.vjp with cotangent dy) against the same of
  reference.fused_norm, in one program: shapes, dtypes and values within TOL."""
  kw = dict(kind=case["kind"], eps=case["eps"], layer_index=case["layer_index"])

  def both(x, scale, bias, dy):
    out = []
    for f in (fn, lambda x, s, b: reference.fused_norm(x, s, b, **kw)):
      y, vjp = jax.vjp(f, x, scale, bias)
      out.append((y, *vjp(dy)))
    return out

  actual, expected = _run_once(both, x, scale, bias, dy)
  for name, a, e in zip(("y", "dx", "dscale", "dbias"), actual, expected):
    if e is None:
      assert a is None and bias is None, name
      continue
    assert a.shape == e.shape and a.dtype == e.dtype, name
    assert_close(a, e, TOL[case["dtype"]], f"{name} {case}")


@pytest.mark.parametrize("target", ["tpu", "gpu"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pallas_matches_reference_values_and_gradients(case, target):
  x, scale, bias, dy = _inputs(case, seed=len(str(case)))
  kw = dict(kind=case["kind"], eps=case["eps"], layer_index=case["layer_index"])
  rows, features = x.size // x.shape[-1], x.shape[-1]
  assert pallas.unsupported_reason(rows, features, x.dtype, block_rows=case["block_rows"],
                                   target=target) is None

  def kernel(x, s, b):
    return pallas.fused_norm(x, s, b, block_rows=case["block_rows"], target=target,
                             interpret=True, **kw)

  _assert_matches_reference(kernel, case, x, scale, bias, dy)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_xla_path_backward_matches_autodiff_of_the_reference(case):
  """The "xla" path's written-out backward (xla.py) against jax.vjp of reference.py."""
  x, scale, bias, dy = _inputs(case, seed=len(str(case)) + 1)
  kw = dict(kind=case["kind"], eps=case["eps"], layer_index=case["layer_index"])

  xla_path = lambda x, s, b: pallas_kernels.fused_norm(x, s, b, implementation="xla", **kw)  # noqa: E731
  _assert_matches_reference(xla_path, case, x, scale, bias, dy)


def _numpy_norm(x, scale, bias, kind, eps, layer_index):
  """float64, written from the formulas (np.var, explicit 1/sqrt(l)), sharing no code with
  reference.py."""
  x = np.asarray(x, np.float64)
  if kind == "layernorm":
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  else:
    y = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + eps)
  y = y * np.asarray(scale, np.float64)
  if bias is not None:
    y = y + np.asarray(bias, np.float64)
  return y if layer_index is None else y / np.sqrt(layer_index)


@pytest.mark.parametrize("kind,dtype,layer_index,bias", [
    ("layernorm", jnp.float32, None, True), ("layernorm", jnp.float32, 7, False),
    ("rmsnorm", jnp.float32, None, False), ("rmsnorm", jnp.float32, 12, True),
    ("layernorm", jnp.bfloat16, 3, True), ("rmsnorm", jnp.bfloat16, None, False)])
def test_xla_path_matches_independent_numpy_formula(kind, dtype, layer_index, bias):
  x, scale, b, _ = _inputs(dict(dtype=dtype, shape=(3, 5, 24), bias=bias), seed=3)
  y = pallas_kernels.fused_norm(x, scale, b, kind=kind, eps=1e-5, layer_index=layer_index,
                                implementation="xla")
  assert y.dtype == dtype and y.shape == x.shape
  want = _numpy_norm(x, scale, b, kind, 1e-5, layer_index)
  tol = TOL[dtype]
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol,
                             atol=tol * np.max(np.abs(want)))


@pytest.mark.parametrize("kind", api.KINDS)
def test_output_statistics_and_layer_scaling(kind):
  """scale 1, bias 0: each row has mean 0 (LayerNorm) and rms 1 (both, up to eps); layer_index
  l multiplies the output by exactly 1/sqrt(l) (l = 4: by 1/2)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(6, 64)) * 3.0 + 1.0, jnp.float32)
  ones = jnp.ones(64, jnp.float32)
  y = np.asarray(pallas_kernels.fused_norm(x, ones, kind=kind, implementation="xla"))
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, -1)), 1.0, rtol=1e-5)
  if kind == "layernorm":
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-6)
  y4 = pallas_kernels.fused_norm(x, ones, kind=kind, layer_index=4, implementation="xla")
  np.testing.assert_array_equal(np.asarray(y4), y / 2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the default is backend-specific")
def test_cpu_default_is_xla():
  assert api.default_implementation() == "xla"
  x, scale, bias, _ = _inputs(dict(dtype=jnp.float32, shape=(4, 16), bias=True), seed=1)
  np.testing.assert_array_equal(pallas_kernels.fused_norm(x, scale, bias),
                                pallas_kernels.fused_norm(x, scale, bias, implementation="xla"))


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="xla_chunked"),
     r"implementation must be None or one of \('pallas', 'pallas_interpret', 'xla'\)"),
    (dict(kind="batchnorm"), r"kind must be one of \('layernorm', 'rmsnorm'\)"),
    (dict(x=jnp.zeros((4, 8), jnp.float16)), "x must be float32 or bfloat16"),
    (dict(x=jnp.zeros((4, 8), jnp.int32)), "x must be float32 or bfloat16"),
    (dict(x=jnp.zeros((0, 8))), "non-empty"),
    (dict(x=jnp.zeros(())), "non-empty"),
    (dict(scale=jnp.ones(7)), r"scale must have shape \[features\] = \(8,\)"),
    (dict(scale=jnp.ones((1, 8))), r"scale must have shape \[features\]"),
    (dict(bias=jnp.zeros(9)), r"bias must have shape \[features\] = \(8,\)"),
    (dict(scale=jnp.ones(8, jnp.int32)), "scale must be float32 or bfloat16"),
    (dict(eps=0.0), "eps must be a finite positive number"),
    (dict(eps=float("nan")), "eps must be a finite positive number"),
    (dict(eps=jnp.ones(2)), "eps must be a static Python number"),
    (dict(layer_index=0), "layer_index must be None or a positive int"),
    (dict(layer_index=1.5), "layer_index must be None or a positive int"),
    (dict(layer_index=True), "layer_index must be None or a positive int"),
    (dict(x=jnp.zeros((32, 8)), block_rows=12, implementation="pallas_interpret"),
     r"implementation='pallas_interpret' cannot run this call \(tpu kernel\): block_rows=12: "
     r"the TPU needs a multiple of 8"),
    (dict(block_rows=0), "block_rows must be None or a positive int"),
])
def test_invalid_arguments_raise_clear_errors(overrides, match):
  kw = dict(x=jnp.zeros((4, 8)), scale=jnp.ones(8), bias=None)
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.fused_norm(kw.pop("x"), kw.pop("scale"), kw.pop("bias"), **kw)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="compiled Pallas runs on GPU/TPU")
def test_explicit_compiled_pallas_on_cpu_raises_naming_the_valid_values():
  with pytest.raises(ValueError, match=r"implementation='pallas' compiles the kernels for a GPU "
                     r"or TPU.*\('xla',\)"):
    pallas_kernels.fused_norm(jnp.zeros((4, 8)), jnp.ones(8), implementation="pallas")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret layout is backend-specific")
def test_api_pallas_interpret_runs_the_tpu_layout_kernel():
  """On a CPU host "pallas_interpret" runs the kernels laid out for the TPU; a bfloat16
  block_rows of 8 (not 16 sublanes) is refused there, and 16 matches the reference."""
  x, scale, bias, _ = _inputs(dict(dtype=jnp.bfloat16, shape=(40, 24), bias=True), seed=2)
  with pytest.raises(ValueError, match="multiple of 16"):
    pallas_kernels.fused_norm(x, scale, bias, implementation="pallas_interpret", block_rows=8)
  got = pallas_kernels.fused_norm(x, scale, bias, implementation="pallas_interpret",
                                  block_rows=16)
  assert_close(got, pallas_kernels.fused_norm(x, scale, bias, implementation="xla"),
               TOL[jnp.bfloat16], "y")


def test_traced_eps_is_rejected_under_jit():
  with pytest.raises(ValueError, match="eps must be a static Python number"):
    jax.jit(lambda e: pallas_kernels.fused_norm(jnp.ones((2, 8)), jnp.ones(8), eps=e))(1e-6)
