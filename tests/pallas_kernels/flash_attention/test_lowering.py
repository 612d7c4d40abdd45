"""Attention lowered for TPU (Mosaic) and GPU (Triton) from this CPU host with jax.export: the
forward and both backward kernels are in the exported module (a silent XLA fallback fails), on
realistic shapes through the public API with implementation=None; shapes a target cannot take
are refused before lowering, with the reason. Nothing here runs a kernel: arguments are
ShapeDtypeStructs, so long sequences cost nothing. Lowering is not device compilation."""

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels.flash_attention import pallas
from tests.pallas_kernels.lowering import export_text, kernel_names, target_device

FWD, DQ, DKV = "flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"
PLATFORMS = ("tpu", "cuda")
S = jax.ShapeDtypeStruct


def _args(B, L, H, K, D, dtype, *, segments=False):
  args = [S((B, L, H, D), dtype), S((B, L, K, D), dtype), S((B, L, K, D), dtype)]
  return args + [S((B, L), jnp.int32)] if segments else args


def _attention(**kw):
  def fn(q, k, v, *seg):
    return pallas_kernels.attention(q, k, v, segment_ids=seg[0] if seg else None, **kw)
  return fn


def _grad(fn):
  """dq, dk, dv of sum(fn): the forward kernel, then dQ and dK/dV."""
  return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=(0, 1, 2))


# (batch, seq, heads, kv_heads, head_dim, dtype, options): seq 512 / 2048, head_dim 64 / 128,
# bf16 / f32, GQA up to 8:1, causal, window, segment ids, soft-capping, a partial last block
CONFIGS = [
    (2, 512, 4, 4, 64, jnp.bfloat16, dict(causal=True)),
    (1, 2048, 8, 1, 128, jnp.float32, dict(causal=True, window=256, segments=True)),
    (1, 512, 8, 1, 128, jnp.bfloat16, dict(window=128, segments=True)),
    (2, 2048, 16, 2, 64, jnp.bfloat16, dict(causal=True, segments=True, softcap=30.0)),
    (1, 1000, 4, 2, 80, jnp.float32, dict(causal=True)),
]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[1]}x{c[4]}-{c[5].__name__}-"
                         f"{c[2]}:{c[3]}-{'-'.join(c[6])}")
def test_forward_and_backward_export_with_every_kernel(platform, config):
  B, L, H, K, D, dtype, options = config
  options = dict(options)
  args = _args(B, L, H, K, D, dtype, segments=options.pop("segments", False))
  fn = _attention(**options)
  assert kernel_names(export_text(fn, *args, platform=platform), platform) == [FWD]
  assert kernel_names(export_text(_grad(fn), *args, platform=platform), platform) == [FWD, DQ,
                                                                                       DKV]


@pytest.mark.parametrize("platform,seq", [("tpu", 32768), ("cuda", 16384)])
def test_long_sequence_gqa_8_to_1_lowers_with_the_kernels(platform, seq):
  """The issue's acceptance: bf16, GQA 8:1, causal, fwd + bwd at 32k keys (TPU: VMEM per grid
  step is independent of the sequence length) and 16k (GPU), no fallback."""
  args = _args(1, seq, 32, 4, 128, jnp.bfloat16)
  text = export_text(_grad(_attention(causal=True)), *args, platform=platform)
  assert kernel_names(text, platform) == [FWD, DQ, DKV]


def test_issue_example_lowers_for_cuda_with_triton():
  """Issue 14's example (it raised "Async copies only support copying <=256 elements" under
  Mosaic GPU): the pallas entry with target="gpu" exports for cuda as Triton calls."""
  q = S((2, 512, 4, 64), jnp.bfloat16)
  with target_device("cuda"):  # jax >= 0.11 on a CPU host: the GPU Triton compiles for
    exported = jax.export.export(
        jax.jit(lambda q, k, v: pallas.attention(q, k, v, causal=True, target="gpu")),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(q, q, q)
  assert kernel_names(exported.mlir_module(), "cuda") == [FWD]


@pytest.mark.parametrize("dtype,block_k", [(jnp.float32, 64), (jnp.bfloat16, 64),
                                           (jnp.float32, 8)])
def test_tpu_segment_ids_with_block_k_below_128_lower(dtype, block_k):
  """The old dK/dV kernel's kv segment-id block (1, block_k) failed to lower for block_k not a
  multiple of 128; the key tile's ids are now the full last two dims of a [batch, key blocks, 1,
  block_k] array."""
  args = _args(1, 512, 8, 2, 64, dtype, segments=True)
  fn = _attention(causal=True, block_q=128, block_k=block_k)
  assert kernel_names(export_text(_grad(fn), *args, platform="tpu"), "tpu") == [FWD, DQ, DKV]


@pytest.mark.parametrize("platform,kw,match", [
    ("tpu", dict(block_k=24, dtype=jnp.bfloat16), "multiple of 16 for bfloat16"),
    ("tpu", dict(block_q=2048, block_k=2048, D=256), "VMEM"),
    ("cuda", dict(block_k=24), "power of two >= 16"),
    ("cuda", dict(D=320), "exceeds 256"),
])
def test_refused_shapes_export_without_kernels(platform, kw, match):
  """unsupported_reason names the limit; None then exports the XLA path with no kernel call,
  and an explicit kernel request raises ValueError with the reason."""
  dtype, D = kw.pop("dtype", jnp.float32), kw.pop("D", 64)
  target = {"tpu": "tpu", "cuda": "gpu"}[platform]
  args = _args(1, 512, 4, 2, D, dtype)
  reason = pallas.unsupported_reason(args[0].shape, args[1].shape, dtype, target=target, **kw)
  assert reason is not None and match in reason
  text = export_text(_grad(_attention(causal=True, **kw)), *args, platform=platform)
  assert kernel_names(text, platform) == []
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda q, k, v: pallas.attention(q, k, v, target=target, **kw), *args)
  if target == "tpu":  # what "pallas_interpret" emulates on this CPU host
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(_attention(implementation="pallas_interpret", **kw), *args)


def test_mask_runs_xla_on_every_platform():
  """The kernels take no mask: with one, None exports the dense XLA path everywhere."""
  args = _args(1, 512, 4, 4, 64, jnp.bfloat16)
  mask = jnp.ones((1, 1, 1, 512), bool)
  fn = _attention(causal=True, mask=mask)
  for platform in PLATFORMS:
    assert kernel_names(export_text(_grad(fn), *args, platform=platform), platform) == []

