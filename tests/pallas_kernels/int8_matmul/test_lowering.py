"""int8_matmul / quantized_matmul lower for "tpu" (Mosaic) and "cuda" (Triton) from this CPU host
with implementation=None on realistic shapes, and the exported module holds every kernel:
"int8_matmul" (forward) and "int8_matmul_scale_grads" (backward of the scales; quantized_matmul's
straight-through backward is two XLA dots). A silent XLA fallback fails these tests. Calls a
target refuses (pallas.unsupported_reason) export with no kernel call for that target and make
an explicit "pallas_interpret" raise. Args are jax.ShapeDtypeStructs: nothing runs."""

import re

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels import _dispatch
from pallas_kernels.int8_matmul import pallas
from tests.pallas_kernels.lowering import export_text, kernel_names

PLATFORMS = {"tpu": "tpu", "cuda": "gpu"}  # lowering platform -> kernel target
FWD, BWD = "int8_matmul", "int8_matmul_scale_grads"
SHAPES = [(4096, 1024, 1024), (4096, 4096, 4096), (1000, 1024, 4000)]  # (M, K, N); last padded


def _sds(shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype)


def _int8_args(M, K, N):
  return (_sds((M, K), jnp.int8), _sds((K, N), jnp.int8), _sds((M,), jnp.float32),
          _sds((N,), jnp.float32))


def _int8_value_and_scale_grads(**kw):
  def f(x_q, w_q, xs, ws):
    y, vjp = jax.vjp(lambda a, b: pallas_kernels.int8_matmul(x_q, w_q, a, b, **kw), xs, ws)
    return y, vjp(jnp.ones_like(y))
  return f


@pytest.mark.parametrize("platform", list(PLATFORMS))
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_matmul_forward_and_backward_lower_with_kernels(platform, M, K, N):
  text = export_text(_int8_value_and_scale_grads(), *_int8_args(M, K, N), platform=platform)
  assert sorted(kernel_names(text, platform)) == [FWD, BWD]


@pytest.mark.parametrize("platform", list(PLATFORMS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantized_matmul_lowers_with_kernel(platform, dtype):
  """Value and straight-through gradients of a [8, 512, 1024] x [1024, 4096] layer."""
  def f(x, w):
    y, vjp = jax.vjp(pallas_kernels.quantized_matmul, x, w)
    return y, vjp(jnp.ones_like(y))

  text = export_text(f, _sds((8, 512, 1024), dtype), _sds((1024, 4096), dtype),
                     platform=platform)
  assert kernel_names(text, platform) == [FWD]


def test_cpu_export_has_no_kernel():
  text = export_text(_int8_value_and_scale_grads(), *_int8_args(256, 256, 256), platform="cpu")
  assert "tpu_custom_call" not in text and "triton" not in text


# Blocks a target cannot take: (blocks, targets that refuse them).
REFUSED = [
    (dict(block_m=48), ("tpu", "gpu")),  # TPU: not a multiple of 32; GPU: not a power of two
    (dict(block_m=96), ("gpu",)),  # a multiple of 32 but not a power of two
    (dict(block_k=16), ("tpu", "gpu")),  # below the 128 lanes and int8 MMA's k = 32
    (dict(block_k=384), ("gpu",)),  # a multiple of 128 but not a power of two
    (dict(block_m=512, block_n=256), ("gpu",)),  # int32 accumulator too big for registers
    (dict(block_m=1024, block_n=1024, block_k=1024), ("tpu", "gpu")),  # TPU: over VMEM
    (dict(block_n=64), ("tpu",)),  # below the 128 lanes
]


@pytest.mark.parametrize("blocks,refused_by", REFUSED)
def test_refused_blocks_export_without_kernel_and_raise_when_explicit(blocks, refused_by,
                                                                      monkeypatch):
  M, K, N = 4096, 1024, 1024
  block_tuple = tuple(blocks.get(name) for name in pallas.BLOCK_NAMES)
  for platform, target in PLATFORMS.items():
    reason = pallas.unsupported_reason(M, N, K, block_tuple, target)
    assert (reason is not None) == (target in refused_by), (target, reason)
    text = export_text(_int8_value_and_scale_grads(**blocks), *_int8_args(M, K, N),
                       platform=platform)
    assert sorted(kernel_names(text, platform)) == ([] if reason else [FWD, BWD])
    if reason:
      monkeypatch.setattr(_dispatch, "interpret_target", lambda: target)
      with pytest.raises(ValueError, match=re.escape(f"({target} kernel): {reason}")):
        jax.eval_shape(_int8_value_and_scale_grads(implementation="pallas_interpret", **blocks),
                       *_int8_args(M, K, N))


def test_int32_offset_overflow_refused_on_gpu():
  """Triton addresses a whole-array ref with int32 offsets."""
  M, K, N = 2**20, 4096, 1024  # x: 2^32 elements
  assert "int32 offsets" in pallas.unsupported_reason(M, N, K, (None,) * 3, "gpu")
  assert pallas.unsupported_reason(M, N, K, (None,) * 3, "tpu") is None
