"""pallas_kernels.flash_attention: every implementation against the plain-autodiff reference
(reference.py; values and dq, dk, dv): the XLA paths through the public API, the Pallas kernels
of both targets ("tpu": Mosaic layout, "gpu": Triton layout) in the Pallas interpreter with the
block sizes each target takes; the reference against a naive numpy loop, masking edge cases, the
block-skipping ranges, argument errors, the dispatch rule on CPU, and linear memory of the
chunked path. Lowering for real TPUs/GPUs: test_lowering.py.

Tolerances: |x - ref| <= tol * |ref| + tol * max|ref| elementwise (relative to each entry and to
the tensor's scale), tol = 1e-5 for float32 and 2e-2 for bfloat16 (the reference computes in f32
from the same bf16 inputs; the kernels round P and dS to bf16 before their matmuls, as
FlashAttention does).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import _dispatch
from pallas_kernels.flash_attention import api, chunked, dense, pallas, reference
from tests.pallas_kernels.lowering import export_text
from tests.pallas_kernels.tolerances import TOL, assert_close, value_and_grads


# Feature combinations; shapes are drawn per case (seeded) so that sequence lengths are mostly
# not multiples of the block sizes (8 or 16) and span several blocks.
CASES = [
    dict(),  # plain, with head_dim 12 (padded to 16 by the Pallas path)
    dict(causal=True, gqa=True),
    dict(window=4, softcap=3.0),
    dict(segments=True, softcap=2.0, gqa=True),
    dict(causal=True, window=6, segments=True, gqa=True, softcap=5.0),
    dict(causal=True, kv_longer=True),  # q_len < kv_len: queries are the last positions
    dict(segments=True, q_longer=True, window=7),
    dict(causal=True, gqa=True, dtype=jnp.bfloat16),
    dict(window=5, segments=True, softcap=4.0, dtype=jnp.bfloat16),
    dict(causal=True, segments=True, gqa=True, scale=0.3, dtype=jnp.bfloat16),
    dict(causal=True, window=3, segments=True, scale=0.5),
]


def _random_segments(rng, batch, length, num_segments=3):
  """Sorted ids: contiguous packed sequences, as real packing produces."""
  return jnp.asarray(np.sort(rng.integers(0, num_segments, (batch, length)), axis=1), jnp.int32)


def _make_case(index, case):
  rng = np.random.default_rng(index)
  dtype = case.get("dtype", jnp.float32)
  B = int(rng.integers(1, 3))
  K = int(rng.choice([1, 2])) if case.get("gqa") else 2
  H = K * (int(rng.choice([2, 3])) if case.get("gqa") else 1)
  D = 12 if index == 0 else int(rng.choice([8, 16]))
  Lq = int(rng.integers(17, 40))  # >= 2 blocks of 8 or 16, mostly a partial last block
  Lk = Lq
  if case.get("kv_longer"):
    Lk = Lq + int(rng.integers(1, 12))
  if case.get("q_longer"):
    Lk = Lq - int(rng.integers(1, 6))

  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), dtype)

  q, k, v, do = normal(B, Lq, H, D), normal(B, Lk, K, D), normal(B, Lk, K, D), normal(B, Lq, H, D)
  kw = dict(causal=case.get("causal", False), window=case.get("window"),
            softcap=case.get("softcap"), scale=case.get("scale"))
  if case.get("segments"):
    kw["segment_ids"] = (_random_segments(rng, B, Lq) if Lq == Lk else
                         (_random_segments(rng, B, Lq), _random_segments(rng, B, Lk)))
  # "xla_chunked" and the TPU kernels take multiples of 8 (TPU bf16: 16); GPU: 16 (pow2 >= 16)
  blocks = {n: int(rng.choice([8, 16])) for n in ("block_q", "block_k")}
  blocks = {"xla_chunked": blocks, "gpu": dict(block_q=16, block_k=16),
            "tpu": blocks if dtype == jnp.float32 else dict(block_q=16, block_k=16)}
  return (q, k, v, do), kw, blocks, TOL[dtype]


@functools.cache
def _expected(index):
  """Reference output and gradients of case `index` (shared by both implementations' tests)."""
  (q, k, v, do), kw, _, _ = _make_case(index, CASES[index])
  kw = dict(kw)
  seg = kw.pop("segment_ids", None)
  if seg is not None:
    kw["q_segment_ids"], kw["kv_segment_ids"] = seg if isinstance(seg, tuple) else (seg, seg)
  return value_and_grads(functools.partial(reference.attention, **kw), q, k, v, do)


def _case_id(i):
  return "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in CASES[i].items()) or "plain"


def _kernel(target, *, segment_ids=None, **kw):
  """pallas.attention of `target` in the interpreter, with api-style segment_ids."""
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids,) * 2
    kw.update(q_segment_ids=q_seg, kv_segment_ids=kv_seg)
  return functools.partial(pallas.attention, target=target, interpret=True, **kw)


def _run(implementation, blocks, **kw):
  """A function of (q, k, v): an XLA path through the public API, or a target's kernels."""
  if implementation in ("tpu", "gpu"):
    return _kernel(implementation, **blocks[implementation], **kw)
  blocks = blocks.get(implementation, {})
  return lambda q, k, v: pallas_kernels.attention(q, k, v, implementation=implementation,
                                                  **blocks, **kw)


# "xla" is the dense hand-VJP path (dense.py) except with softcap, where it is the reference.
_IMPLEMENTATION_CASES = [
    pytest.param(impl, i, id=f"{impl}-{_case_id(i)}")
    for impl in ("xla", "xla_chunked", "tpu", "gpu") for i in range(len(CASES))
    if not (impl == "xla" and CASES[i].get("softcap"))]


@pytest.mark.parametrize("implementation,index", _IMPLEMENTATION_CASES)
def test_matches_reference_values_and_gradients(index, implementation):
  (q, k, v, do), kw, blocks, tol = _make_case(index, CASES[index])
  expected = _expected(index)
  actual = value_and_grads(_run(implementation, blocks, **kw), q, k, v, do)
  for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
    assert a.shape == e.shape and a.dtype == e.dtype, name
    assert_close(a, e, tol, f"{name} q{q.shape} k{k.shape} {kw} {blocks}", nontrivial=False)


def _numpy_attention(q, k, v, *, causal, window, q_seg, k_seg, softcap, scale):
  """Independent float64 loops, written from the conventions in the reference's docstring."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, Lq, H, D = q.shape
  Lk, K = k.shape[1], k.shape[2]
  out = np.zeros_like(q)
  for b, h, i in itertools.product(range(B), range(H), range(Lq)):
    pos = i + Lk - Lq
    kh = h // (H // K)
    logits, values = [], []
    for j in range(Lk):
      if causal and (j > pos or (window is not None and pos - j >= window)):
        continue
      if not causal and window is not None and abs(pos - j) >= window:
        continue
      if q_seg is not None and q_seg[b, i] != k_seg[b, j]:
        continue
      s = scale * float(q[b, i, h] @ k[b, j, kh])
      logits.append(softcap * np.tanh(s / softcap) if softcap else s)
      values.append(v[b, j, kh])
    if logits:
      w = np.exp(np.array(logits) - max(logits))
      out[b, i, h] = (w / w.sum()) @ np.array(values)
  return out


@pytest.mark.parametrize("causal,window,segments,softcap,lq,lk", [
    (True, 3, True, 2.0, 9, 9),
    (False, 4, False, None, 6, 9),
    (True, None, True, None, 9, 5),
])
def test_reference_matches_numpy_loops(causal, window, segments, softcap, lq, lk):
  rng = np.random.default_rng(7)
  q = rng.normal(size=(2, lq, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, lk, 2, 8)).astype(np.float32)
  v = rng.normal(size=(2, lk, 2, 8)).astype(np.float32)
  q_seg = rng.integers(0, 2, (2, lq)) if segments else None
  k_seg = rng.integers(0, 2, (2, lk)) if segments else None
  got = reference.attention(q, k, v, causal=causal, window=window, softcap=softcap,
                            q_segment_ids=q_seg, kv_segment_ids=k_seg)
  want = _numpy_attention(q, k, v, causal=causal, window=window, q_seg=q_seg, k_seg=k_seg,
                          softcap=softcap, scale=8 ** -0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["xla", "xla_chunked", "pallas_interpret", "gpu"])
def test_fully_masked_rows_give_zero_output_and_gradients(implementation):
  """Queries that see no key get 0 and zero gradients, not NaN: with q_len 12 > kv_len 5 and
  causal masking the first 7 queries precede every key, and queries 9, 10 have segment id 7,
  which no key has. ("pallas_interpret" runs the TPU layout on CPU.)"""
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(1, 12, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.float32)
  q_seg = jnp.asarray([[0] * 9 + [7, 7, 1]])
  k_seg = jnp.asarray([[0] * 3 + [1] * 2])
  gpu = implementation == "gpu" or (implementation == "pallas_interpret"
                                    and _dispatch.interpret_target() == "gpu")
  size = 16 if gpu else 8
  blocks = {implementation: dict(block_q=size, block_k=size)}
  fn = _run(implementation, blocks, causal=True, segment_ids=(q_seg, k_seg))
  out, dq, dk, dv = value_and_grads(fn, q, k, k, jnp.ones_like(q))
  for x in (out, dq, dk, dv):
    assert np.all(np.isfinite(x))
  masked = np.array([True] * 7 + [False] * 2 + [True] * 2 + [False])
  np.testing.assert_array_equal(out[:, masked], 0.0)
  np.testing.assert_array_equal(dq[:, masked], 0.0)
  assert np.all(np.abs(out[:, ~masked]).max(axis=(0, 2, 3)) > 0)
  assert np.abs(dk).max() > 0 and np.abs(dv).max() > 0


@pytest.mark.parametrize("causal,window", [(True, None), (True, 5), (False, 5), (False, None)])
def test_skipped_blocks_are_fully_masked(causal, window):
  """key_block_range / query_block_range (the blocks both blocked paths visit) against brute
  force: every block outside the range has no visible (query, key) pair."""
  for lq, lk, bq, bk in [(24, 24, 8, 8), (20, 37, 8, 16), (37, 20, 16, 8)]:
    nq, nk = chunked.cdiv(lq, bq), chunked.cdiv(lk, bk)
    c = chunked.Config(causal=causal, window=window, softcap=None, scale=1.0, q_len=lq,
                       k_len=lk, block_q=bq, block_k=bk)
    qpos = np.arange(nq * bq)[:, None] + lk - lq
    kpos = np.arange(nk * bk)[None, :]
    vis = np.array(reference.visible(qpos, kpos, causal=causal, window=window, k_len=lk))
    vis[lq:] = False  # padding queries
    for i, j in itertools.product(range(nq), range(nk)):
      any_visible = vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].any()
      k_lo, k_hi = (int(x) for x in chunked.key_block_range(i, c, nk))
      q_lo, q_hi = (int(x) for x in chunked.query_block_range(j, c, nq))
      if any_visible:
        assert k_lo <= j < k_hi and q_lo <= i < q_hi, (lq, lk, bq, bk, i, j)
    if causal and lq == lk:  # the first query block skips all later key blocks
      assert int(chunked.key_block_range(0, c, nk)[1]) == 1


def _ok(**overrides):
  q = jnp.zeros((1, 8, 4, 8))
  kv = jnp.zeros((1, 8, 2, 8))
  kw = dict(q=q, k=kv, v=kv)
  kw.update(overrides)
  return kw


@pytest.mark.parametrize("overrides,match", [
    (dict(implementation="flash"), "implementation must be None or one of"),
    (dict(k=jnp.zeros((1, 8, 3, 8)), v=jnp.zeros((1, 8, 3, 8))), r"heads \(4\) must be a multiple"),
    (dict(v=jnp.zeros((1, 9, 2, 8))), "k and v shapes must match"),
    (dict(q=jnp.zeros((8, 4, 8))), r"q must be \[batch, seq, heads, head_dim\]"),
    (dict(q=jnp.zeros((1, 8, 4, 16))), "head_dim 16"),
    (dict(q=jnp.zeros((1, 8, 4, 8), jnp.float16)), "float32 or all bfloat16"),
    (dict(segment_ids=jnp.zeros((1, 7), jnp.int32)), r"q_segment_ids must have shape"),
    (dict(segment_ids=jnp.zeros((1, 8))), "must be an integer array"),
    (dict(q=jnp.zeros((1, 6, 4, 8)), segment_ids=jnp.zeros((1, 6), jnp.int32)),
     "pass segment_ids as a pair"),
    (dict(window=0), "window must be None or a positive int"),
    (dict(softcap=-1.0), "softcap must be a finite positive number"),
    (dict(causal="yes"), "causal must be a Python bool"),
    # "pallas_interpret" runs the TPU layout on a CPU host, the Triton one on a GPU machine
    (dict(block_q=12, implementation="pallas_interpret"),
     "block_q=12: the (TPU kernels need a multiple of 8|Triton)"),
    (dict(block_k=8, implementation="pallas_interpret", q=jnp.zeros((1, 8, 4, 8), jnp.bfloat16),
          k=jnp.zeros((1, 8, 2, 8), jnp.bfloat16), v=jnp.zeros((1, 8, 2, 8), jnp.bfloat16)),
     "block_k=8: the (TPU kernels need a multiple of 16 for bfloat16|Triton)"),
    (dict(block_k=0, implementation="xla_chunked"), "block_k must be None or a positive int"),
])
def test_invalid_arguments_raise_clear_errors(overrides, match):
  kw = _ok(**overrides)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.attention(kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw)


def test_traced_scale_is_rejected():
  q = jnp.zeros((1, 8, 2, 8))
  with pytest.raises(ValueError, match="scale must be a static Python number"):
    jax.jit(lambda s: pallas_kernels.attention(q, q, q, scale=s))(0.5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU choice")
def test_cpu_default_is_dense_then_chunked_with_no_kernel_and_pallas_raises():
  assert api.default_implementation() == "xla_chunked"
  assert api.default_implementation(16 * 4 * 256 * 256) == "xla"
  assert api.default_implementation(dense.DENSE_MAX_LOGITS + 1) == "xla_chunked"
  assert api.default_implementation(16 * 4 * 256 * 256, kv_len=256) == "xla"
  assert api.default_implementation(4 * 1024 * 1024, kv_len=dense.DENSE_MAX_KV_LEN) == "xla_chunked"

  def cpu_program(L):  # None exported for CPU: the XLA path only (chunked = while loops)
    x = jax.ShapeDtypeStruct((1, L, 2, 8), jnp.float32)
    text = export_text(lambda q: pallas_kernels.attention(q, q, q, causal=True), x,
                       platform="cpu")
    assert "custom_call @tpu_custom_call" not in text and "triton" not in text
    return text

  assert "stablehlo.while" not in cpu_program(256)
  assert "stablehlo.while" in cpu_program(dense.DENSE_MAX_KV_LEN)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 10, 2, 8)), jnp.float32)
  np.testing.assert_allclose(jax.jit(lambda q: pallas_kernels.attention(q, q, q, causal=True))(q),
                             reference.attention(q, q, q, causal=True), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="compiles the kernels for a GPU or TPU"):
    pallas_kernels.attention(q, q, q, implementation="pallas")


def test_kernels_refuse_with_a_reason_before_lowering():
  """Per-target block rules and limits, checked before anything is traced; the TPU VMEM
  budget does not depend on the sequence length (key blocks are on a grid axis)."""
  f32, bf16 = jnp.float32, jnp.bfloat16
  reason = functools.partial(pallas.unsupported_reason, (1, 32768, 32, 128), (1, 32768, 4, 128))
  assert reason(bf16, target="tpu") is None
  assert reason(bf16, target="gpu") is None
  assert reason(bf16, target="tpu", block_q=512, block_k=512) is None
  assert "VMEM" in reason(f32, target="tpu", block_q=2048, block_k=2048)
  assert "multiple of 16 for bfloat16" in reason(bf16, target="tpu", block_k=24)
  assert reason(f32, target="tpu", block_k=24) is None
  assert "power of two >= 16" in reason(f32, target="gpu", block_k=24)
  assert "power of two >= 16" in reason(f32, target="gpu", block_q=8)
  assert "exceeds 256" in pallas.unsupported_reason((1, 64, 4, 320), (1, 64, 4, 320), f32,
                                                    target="gpu")
  x = jnp.zeros((1, 32, 2, 8), f32)
  with pytest.raises(ValueError, match="power of two"):
    pallas.attention(x, x, x, target="gpu", block_k=24, interpret=True)
  with pytest.raises(ValueError, match="target must be 'tpu' or 'gpu'"):
    pallas.attention(x, x, x, target="cuda", interpret=True)


def test_top_level_function_is_the_dispatcher():
  import pallas_kernels.flash_attention.pallas as pallas_module
  assert pallas_kernels.flash_attention.pallas is pallas_module
  assert pallas_kernels.attention is api.attention
  assert pallas_kernels.flash_attention.attention is api.attention


def _largest_intermediate(jaxpr) -> int:
  """Largest array (in elements) any equation of `jaxpr` or its sub-jaxprs produces."""
  biggest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          biggest = max(biggest, _largest_intermediate(sub))
  return biggest


def test_chunked_memory_is_linear_in_sequence_length():
  """Forward + backward of the chunked path: no [L, L]-sized value in the jaxpr, and XLA's
  temp buffers grow ~linearly from L = 1024 to 2048 (the reference's grow 4x)."""
  def loss(implementation):
    def f(q, k, v):
      return jnp.sum(pallas_kernels.attention(q, k, v, causal=True, block_q=128, block_k=128,
                                              implementation=implementation))
    return jax.grad(f, argnums=(0, 1, 2))

  temps = {}
  for L in (1024, 2048):
    x = jax.ShapeDtypeStruct((1, L, 1, 16), jnp.float32)
    assert _largest_intermediate(jax.make_jaxpr(loss("xla_chunked"))(x, x, x).jaxpr) < L * L / 16
    compiled = jax.jit(loss("xla_chunked")).lower(x, x, x).compile()
    temps[L] = compiled.memory_analysis().temp_size_in_bytes
  assert temps[2048] < 2.5 * temps[1024], temps
  assert temps[2048] < 2048 * 2048 * 4 / 8, temps  # far below one f32 [L, L] matrix (16 MiB)
  x = jax.ShapeDtypeStruct((1, 1024, 1, 16), jnp.float32)
  ref_temp = jax.jit(loss("xla")).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes
  assert ref_temp >= 1024 * 1024 * 4  # the measurement does see an [L, L] buffer
