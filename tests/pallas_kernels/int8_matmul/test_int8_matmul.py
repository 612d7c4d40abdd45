"""pallas_kernels.int8_matmul / quantized_matmul: the Pallas kernels of both targets ("tpu" Mosaic
layout with a K grid axis, "gpu" Triton layout with a K loop; interpret mode) against the XLA
reference (values bitwise, the scales' gradients through jax.vjp), the reference against an
int64 numpy product, bitwise agreement with jaxlab.quant's int8 fake-quant matmul for
power-of-two scales, the local quantizer against jaxlab's, the straight-through gradients of
quantized_matmul against jax.grad of jaxlab's fake-quant matmul, and argument / dispatch errors.

Tolerances: values of the integer matmul are compared bitwise (int32 accumulation is exact and
every implementation rescales in the same order). Gradients: |a - ref| <= tol * |ref| +
tol * max|ref| elementwise, tol = 1e-5 for float32 and 2e-2 for bfloat16 operands of
quantized_matmul (their gradients are rounded to bf16).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from jaxlab.quant import config as quant_config, formats, quantizers
from pallas_kernels import _dispatch
from pallas_kernels.int8_matmul import api, pallas, quantize_int8
from tests.pallas_kernels.tolerances import TOL, assert_close

HIGHEST = jax.lax.Precision.HIGHEST
# Smallest valid blocks per target, and a larger choice (block_m, block_n, block_k).
BLOCK_CHOICES = {"tpu": ((32, 64), (128,), (128,)), "gpu": ((16, 32), (16, 32), (32, 64))}


def _random_cases(target, n=3, seed=0):
  """Random small (M, K, N), none a multiple of its block (padded tiles; K > block_k so the int32
  accumulator runs over 2-3 K steps), valid blocks of `target`, scalar or vector scales."""
  rng = np.random.default_rng(seed)
  cases = []
  for i in range(n):
    blocks = [int(rng.choice(c)) for c in BLOCK_CHOICES[target]]
    dims = []
    for b in blocks:
      d = int(rng.integers(b // 2, 2 * b))
      dims.append(d + 1 if d % b == 0 else d)
    dims[2] = max(dims[2], blocks[2] + 1)
    cases.append(dict(target=target, M=dims[0], N=dims[1], K=dims[2], block_m=blocks[0],
                      block_n=blocks[1], block_k=blocks[2], scalar_x_scale=i == 1,
                      scalar_w_scale=i in (1, 2)))
  return cases


CASES = _random_cases("tpu") + _random_cases("gpu")
MIN_BLOCKS = {t: dict(zip(pallas.BLOCK_NAMES, (c[0] for c in BLOCK_CHOICES[t])))
              for t in BLOCK_CHOICES}


@pytest.fixture(params=["tpu", "gpu"])
def interpret_target(request, monkeypatch):
  """Both layouts through the public API: "pallas_interpret" emulates this machine's
  accelerator (the TPU's on CPU), so the GPU run patches the dispatcher's choice."""
  monkeypatch.setattr(_dispatch, "interpret_target", lambda: request.param)
  return request.param


def _ids(cases):
  return ["-".join(f"{k}={v}" for k, v in c.items()) for c in cases]


def _run_once(fn, *args):
  """fn jit-compiled as one program without XLA's backend optimisations (these tiny programs run
  once, so compile time dominates), then run on args."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _codes(rng, shape):
  return jnp.asarray(rng.integers(-128, 128, size=shape), jnp.int8)  # the full int8 range


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pallas_matches_reference_values_and_scale_gradients(case):
  rng = np.random.default_rng(len(str(case)))
  M, K, N = case["M"], case["K"], case["N"]
  x_q, w_q = _codes(rng, (M, K)), _codes(rng, (K, N))
  xs = jnp.asarray(rng.uniform(0.01, 0.1, size=() if case["scalar_x_scale"] else (M,)),
                   jnp.float32)
  ws = jnp.asarray(rng.uniform(0.01, 0.1, size=() if case["scalar_w_scale"] else (N,)),
                   jnp.float32)
  g = jnp.asarray(rng.normal(size=(M, N)), jnp.float32)
  blocks = {k: case[k] for k in pallas.BLOCK_NAMES}
  assert pallas.unsupported_reason(M, N, K, tuple(blocks.values()), case["target"]) is None
  kernel = functools.partial(pallas.int8_matmul, target=case["target"], interpret=True, **blocks)
  xla = functools.partial(pallas_kernels.int8_matmul, implementation="xla")

  def both(xs, ws, g):
    out = []
    for fn in (kernel, xla):
      y, vjp = jax.vjp(lambda a, b: fn(x_q, w_q, jnp.broadcast_to(a, (M,)),
                                       jnp.broadcast_to(b, (N,))), xs, ws)
      out.append((y, *vjp(g)))
    return out

  (y, dxs, dws), (y_ref, dxs_ref, dws_ref) = _run_once(both, xs, ws, g)
  assert y.dtype == jnp.float32 and y.shape == (M, N)
  np.testing.assert_array_equal(y, y_ref)
  for name, a, e in (("dx_scale", dxs, dxs_ref), ("dw_scale", dws, dws_ref)):
    assert a.shape == e.shape and a.dtype == e.dtype, name
    assert_close(a, e, TOL[jnp.float32], f"{name} {case}")


def test_reference_matches_int64_numpy_product():
  rng = np.random.default_rng(1)
  x_q, w_q = _codes(rng, (9, 300)), _codes(rng, (300, 7))
  xs, ws = rng.uniform(1e-3, 1.0, size=9), rng.uniform(1e-3, 1.0, size=7)
  y = pallas_kernels.int8_matmul(x_q, w_q, jnp.asarray(xs, jnp.float32),
                                 jnp.asarray(ws, jnp.float32), implementation="xla")
  acc = np.asarray(x_q, np.int64) @ np.asarray(w_q, np.int64)
  want = acc * np.float64(np.float32(xs))[:, None] * np.float64(np.float32(ws))[None, :]
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-6)


def _pow2_operand(rng, shape, axis):
  """An f32 array whose symmetric int8 abs-max scales along `axis` are powers of two: integer
  codes in [-127, 127] with a +-127 in every slice, times 2^e per slice."""
  q = rng.integers(-127, 128, size=shape)
  reduce_len = shape[axis]
  hit = rng.integers(0, reduce_len, size=shape[1 - axis])
  sign = rng.choice([-127, 127], size=shape[1 - axis])
  if axis == 1:
    q[np.arange(shape[0]), hit] = sign
  else:
    q[hit, np.arange(shape[1])] = sign
  e = rng.integers(-12, 4, size=shape[1 - axis]).astype(np.float64)
  scale = np.exp2(e)
  x = q * (scale[:, None] if axis == 1 else scale[None, :])
  return jnp.asarray(x, jnp.float32), jnp.asarray(q, jnp.int8), jnp.asarray(scale, jnp.float32)


def test_power_of_two_scales_equal_jaxlab_fake_quant_matmul_bitwise(interpret_target):
  """With power-of-two scales, every product s_m q_mk * t_n q_kn and every partial sum of the
  f32 fake-quant matmul is exact (|sum| <= K 127^2 < 2^24 for K <= 1040), so the int8 kernel and
  jaxlab's fake quant (quantize x per token, w per output channel, dequantize, f32 matmul at
  HIGHEST precision) agree bit for bit."""
  rng = np.random.default_rng(2)
  M, K, N = 11, 300, 13
  x, x_q, xs = _pow2_operand(rng, (M, K), axis=1)
  w, w_q, ws = _pow2_operand(rng, (K, N), axis=0)
  # jaxlab's quantized dot_general (what a policy injects into Dense) is the same computation
  qdot = quant_config.quantized_dot_general(quant_config.QuantConfig(
      weight=formats.IntFormat(bits=8, granularity="per_channel"),
      activation=formats.IntFormat(bits=8, granularity="per_token")))

  def everything(x_q, w_q, xs, ws, x, w):
    x_fq = quantizers.int_fake_quant(x, bits=8, granularity="per_token", axis=-1)
    w_fq = quantizers.int_fake_quant(w, bits=8, granularity="per_channel", axis=-1)
    ours = {}
    for kw in (dict(implementation="xla"), dict(implementation="pallas_interpret")):
      ours[kw["implementation"]] = (pallas_kernels.int8_matmul(x_q, w_q, xs, ws, **kw),
                                    pallas_kernels.quantized_matmul(x, w, **kw))
    return (x_fq, w_fq, jnp.dot(x_fq, w_fq, precision=HIGHEST),
            qdot(x, w, (((1,), (0,)), ((), ())), precision=HIGHEST), ours)

  x_fq, w_fq, want, want_qdot, ours = _run_once(everything, x_q, w_q, xs, ws, x, w)
  np.testing.assert_array_equal(x_fq, x)  # the grid holds these values exactly
  np.testing.assert_array_equal(w_fq, w)
  np.testing.assert_array_equal(want_qdot, want)
  for implementation, (y_int8, y_quantized) in ours.items():
    np.testing.assert_array_equal(y_int8, want, err_msg=f"int8_matmul {implementation}")
    np.testing.assert_array_equal(y_quantized, want, err_msg=f"quantized_matmul {implementation}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_local_quantizer_equals_jaxlab_int8_fake_quant(dtype):
  """pallas_kernels cannot import jaxlab.quant (it sits below it), so quantize_int8 is a local
  copy of jaxlab's symmetric int8 abs-max quantizer: q * scale must be jaxlab's fake quant
  bitwise, for generic (non power-of-two) scales and all-zero slices (scale 1), float32 and
  bfloat16 inputs (both quantize in float32)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(10, 24)) * rng.uniform(0.01, 100.0, size=(10, 1))
  x[4] = 0.0
  x = jnp.asarray(x, dtype)

  def both(x):
    out = []
    for axis, granularity in ((1, "per_token"), (0, "per_channel")):
      q, scale = quantize_int8(x, axis=axis)
      axes = quantizers.reduce_axes(x.ndim, granularity)
      jax_scale, _ = quantizers.int_scale(x, 8, True, axes)
      out.append((q, scale, quantizers.int_quantize(x, jax_scale, bits=8),
                  quantizers.int_fake_quant(x, bits=8, granularity=granularity, axis=-1)))
    return out

  for axis, (q, scale, jax_q, fq) in zip((1, 0), _run_once(both, x)):
    assert q.dtype == jnp.int8 and scale.dtype == jnp.float32
    assert scale.shape == (x.shape[1 - axis],)
    assert int(np.max(np.abs(np.asarray(q, np.int32)))) == 127
    np.testing.assert_array_equal(np.asarray(q, np.float32), jax_q)
    deq = np.asarray(q, np.float32) * np.expand_dims(np.asarray(scale), axis)
    np.testing.assert_array_equal(deq.astype(dtype), fq)
    if axis == 1:
      assert float(scale[4]) == 1.0  # the all-zero row


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantized_matmul_values_and_straight_through_gradients(dtype, interpret_target):
  """Values: the Pallas path equals the XLA path bitwise and jaxlab's fake-quant matmul (f32, on
  x and w upcast from dtype) up to float rounding. Gradients: identity-STE gradients of that
  fake-quant matmul, dx = g Q(w)^T, dw = Q(x)^T g, against jax.grad through jaxlab's
  quantizers."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 7, 200)), dtype)  # several K blocks
  w = jnp.asarray(rng.normal(size=(200, 12)) * 0.1, dtype)
  g = jnp.asarray(rng.normal(size=(2, 7, 12)), jnp.float32)

  def jaxlab_fake_quant(x, w):
    xf = quantizers.int_fake_quant(x.astype(jnp.float32), bits=8, granularity="per_token")
    wf = quantizers.int_fake_quant(w.astype(jnp.float32), bits=8, granularity="per_channel")
    return jnp.einsum("btk,kn->btn", xf, wf, precision=HIGHEST)

  fns = (lambda x, w: pallas_kernels.quantized_matmul(
             x, w, implementation="pallas_interpret", **MIN_BLOCKS[interpret_target]),
         lambda x, w: pallas_kernels.quantized_matmul(x, w, implementation="xla"),
         jaxlab_fake_quant)

  def values_and_grads(x, w, g):
    out = []
    for fn in fns:
      y, vjp = jax.vjp(fn, x, w)
      out.append((y, *vjp(g)))
    return out

  actual, via_xla, expected = _run_once(values_and_grads, x, w, g)
  assert actual[0].dtype == jnp.float32 and actual[0].shape == (2, 7, 12)
  assert actual[1].dtype == dtype and actual[2].dtype == dtype
  np.testing.assert_array_equal(actual[0], via_xla[0])
  assert_close(actual[0], expected[0], TOL[jnp.float32], "y")
  for name, a, b, e in zip(("dx", "dw"), actual[1:], via_xla[1:], expected[1:]):
    np.testing.assert_array_equal(a, b)
    assert_close(a, e, TOL[dtype], name)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the default is backend-specific")
def test_cpu_default_is_xla():
  assert api.default_implementation() == "xla"
  rng = np.random.default_rng(5)
  x_q, w_q = _codes(rng, (5, 9)), _codes(rng, (9, 4))
  xs, ws = jnp.float32(0.5), jnp.asarray(rng.uniform(0.1, 1, 4), jnp.float32)

  def value_and_grads(implementation):
    y, vjp = jax.vjp(lambda a, b: pallas_kernels.int8_matmul(
        x_q, w_q, a, b, implementation=implementation), xs, ws)
    return y, vjp(jnp.ones_like(y))

  # None: jit and grad through lax.platform_dependent (the kernels on tpu / cuda only)
  got, want = (jax.jit(lambda: value_and_grads(impl))() for impl in (None, "xla"))
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="triton"),
     r"implementation must be None or one of \('pallas', 'pallas_interpret', 'xla'\)"),
    (dict(x_q=jnp.zeros((4, 8), jnp.int32)), "x_q must be int8"),
    (dict(w_q=jnp.zeros((8, 3), jnp.float32)), "w_q must be int8"),
    (dict(x_q=jnp.zeros((2, 4, 8), jnp.int8)), r"x_q must be \[M, K\]"),
    (dict(w_q=jnp.zeros((7, 3), jnp.int8)), "must share K"),
    (dict(x_q=jnp.zeros((0, 8), jnp.int8), x_scale=jnp.ones(0)), "empty dimension"),
    (dict(x_scale=jnp.ones(5)), r"x_scale must be a scalar or have shape \[M\] = \(4,\)"),
    (dict(w_scale=jnp.ones((1, 3))), r"w_scale must be a scalar or have shape \[N\] = \(3,\)"),
    (dict(w_scale=jnp.ones(3, jnp.int32)), "w_scale must be a floating-point array"),
    (dict(block_k=-8), "block_k must be None or a positive int"),
])
def test_int8_matmul_invalid_arguments_raise_clear_errors(overrides, match):
  kw = dict(x_q=jnp.zeros((4, 8), jnp.int8), w_q=jnp.zeros((8, 3), jnp.int8),
            x_scale=jnp.ones(4), w_scale=1.0)
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.int8_matmul(kw.pop("x_q"), kw.pop("w_q"), kw.pop("x_scale"),
                               kw.pop("w_scale"), **kw)


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="XLA"), "implementation must be None or one of"),
    (dict(x=jnp.zeros(8)), r"x must be \[\.\.\., K\]"),
    (dict(x=jnp.zeros((4, 8), jnp.int8)), "x and w must be float32 or bfloat16"),
    (dict(w=jnp.zeros((9, 3))), "must share K"),
])
def test_quantized_matmul_invalid_arguments_raise_clear_errors(overrides, match):
  kw = dict(x=jnp.zeros((4, 8)), w=jnp.zeros((8, 3)))
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.quantized_matmul(kw.pop("x"), kw.pop("w"), **kw)


@pytest.mark.parametrize("fn", ["int8_matmul", "quantized_matmul"])
@pytest.mark.parametrize("blocks,reason", [
    (dict(block_m=48), {"tpu": "block_m=48: the TPU kernel needs a multiple of 32",
                        "gpu": "block_m=48: the Triton kernel needs a power of two >= 16"}),
    (dict(block_n=64, block_k=16), {"tpu": "block_n=64: the TPU kernel needs a multiple of 128",
                                    "gpu": "block_k=16: the Triton kernel needs a power of two "
                                           ">= 32"}),
])
def test_explicit_interpret_refuses_blocks_the_target_cannot_take(fn, blocks, reason,
                                                                  interpret_target):
  args = ((jnp.zeros((4, 8), jnp.int8), jnp.zeros((8, 3), jnp.int8), 1.0, 1.0)
          if fn == "int8_matmul" else (jnp.zeros((4, 8)), jnp.zeros((8, 3))))
  match = (rf"pallas_kernels\.{fn}: implementation='pallas_interpret' cannot run this call "
           rf"\({interpret_target} kernel\): {reason[interpret_target]}")
  with pytest.raises(ValueError, match=match):
    getattr(pallas_kernels, fn)(*args, implementation="pallas_interpret", **blocks)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="needs a machine with no accelerator")
@pytest.mark.parametrize("fn", ["int8_matmul", "quantized_matmul"])
def test_explicit_compiled_pallas_on_cpu_raises_naming_the_valid_values(fn):
  args = ((jnp.zeros((4, 8), jnp.int8), jnp.zeros((8, 3), jnp.int8), 1.0, 1.0)
          if fn == "int8_matmul" else (jnp.zeros((4, 8)), jnp.zeros((8, 3))))
  with pytest.raises(ValueError, match=r"implementation='pallas' compiles the kernels for a GPU or "
                     r"TPU.*\('xla',\)"):
    getattr(pallas_kernels, fn)(*args, implementation="pallas")
