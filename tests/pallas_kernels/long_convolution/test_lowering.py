"""pallas_kernels.long_conv lowered for the devices from this host (tests/pallas_kernels/
lowering.py): forward and backward (jax.vjp) exported for "tpu" (Mosaic) and "cuda" (Triton)
must carry the forward, du and dk kernels, so a silent XLA fallback fails. Through the public API
with implementation=None where None picks the kernels (TPU up to 8192, GPU up to 1024 steps:
api.MAX_LENGTH), and the kernels themselves (pallas.long_conv with a target) at length 4096 on
both. The kernels' on-chip working set and every array of the program are independent of /
linear in the length; calls a target cannot take are refused with the reason before lowering,
and None then exports with no kernel call. Arguments are jax.ShapeDtypeStructs: nothing runs."""

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels.long_convolution import api, pallas
from tests.pallas_kernels.lowering import export_text, kernel_names

PLATFORMS = ("tpu", "cuda")
TARGET = {"tpu": "tpu", "cuda": "gpu"}
KERNELS = sorted(pallas.NAMES.values())  # forward, du, dk
BATCH, CHANNELS = 2, 768


def _fwd_bwd(conv):
  def step(u, k, dy):
    y, vjp = jax.vjp(conv, u, k)
    return y, vjp(dy)
  return step


def _args(length, dtype, batch=BATCH, channels=CHANNELS):
  u = jax.ShapeDtypeStruct((batch, length, channels), dtype)
  return u, jax.ShapeDtypeStruct((length, channels), dtype), u


def _api_names(platform, length, dtype, **kw):
  text = export_text(_fwd_bwd(lambda u, k: pallas_kernels.long_conv(u, k, **kw)),
                     *_args(length, dtype), platform=platform)
  return sorted(kernel_names(text, platform))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("platform,length", [("tpu", 4096), ("tpu", 8192), ("cuda", 1024)])
def test_api_none_lowers_the_kernels(platform, length, dtype):
  assert length <= api.MAX_LENGTH[TARGET[platform]]
  assert _api_names(platform, length, dtype) == KERNELS


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_kernels_lower_at_length_4096(platform, dtype):
  target = TARGET[platform]
  conv = lambda u, k: pallas.long_conv(u, k, target=target)  # noqa: E731
  assert pallas.unsupported_reason((BATCH, 4096, CHANNELS), dtype, block=None, block_c=None,
                                   target=target) is None
  text = export_text(_fwd_bwd(conv), *_args(4096, dtype), platform=platform)
  assert sorted(kernel_names(text, platform)) == KERNELS


@pytest.mark.parametrize("platform", PLATFORMS)
def test_none_beyond_max_length_runs_fft_with_the_reason(platform):
  """Past MAX_LENGTH the O(L^2) kernels lose to the FFT: None exports without kernel calls;
  the kernels still take the call (an explicit choice), their memory being linear in L."""
  target = TARGET[platform]
  length = 2 * api.MAX_LENGTH[target]
  assert "FFT" in api.length_reason(length, target)
  assert api.length_reason(api.MAX_LENGTH[target], target) is None
  assert pallas.unsupported_reason((BATCH, length, CHANNELS), jnp.bfloat16, block=None,
                                   block_c=None, target=target) is None
  assert _api_names(platform, length, jnp.bfloat16) == []


def _walk(jaxpr, in_kernel=False):
  """(eqn, inside a pallas_call kernel?) for every equation of jaxpr and its sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn, in_kernel
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _walk(sub, in_kernel or eqn.primitive.name == "pallas_call")


def _sizes(target, length):
  """(largest array of the fwd + bwd program outside the kernels, largest value inside a
  kernel, the TPU kernels' block shapes) for u [2, length, 768] bfloat16."""
  conv = lambda u, k: pallas.long_conv(u, k, target=target)  # noqa: E731
  jaxpr = jax.make_jaxpr(_fwd_bwd(conv))(*_args(length, jnp.bfloat16)).jaxpr
  outer, inner, blocks = 0, 0, []
  for eqn, in_kernel in _walk(jaxpr):
    for v in eqn.outvars:
      if hasattr(v.aval, "shape") and not hasattr(v.aval, "inner_aval"):  # arrays, not refs
        if in_kernel:
          inner = max(inner, v.aval.size)
        else:
          outer = max(outer, v.aval.size)
    if eqn.primitive.name == "pallas_call" and target == "tpu":
      blocks.append([tuple(v.aval.shape) for v in eqn.params["jaxpr"].invars])
  return outer, inner, blocks


@pytest.mark.parametrize("target", ["tpu", "gpu"])
def test_memory_is_linear_in_length(target):
  """The old kernels held C * L * T float32 Toeplitz blocks (3.2 GB at L = 8192, C = 768, twice
  in the backward). Now: the largest array of the program is the input plus one block of padding
  (B (L + T) C elements), the kernels' blocks (TPU VMEM) and largest in-kernel value (TPU VMEM,
  GPU registers) are the same at 4096 and 65536 steps."""
  short, long = _sizes(target, 4096), _sizes(target, 65536)
  for length, (outer, _, _) in ((4096, short), (65536, long)):
    assert outer <= BATCH * (length + pallas.DEFAULT_BLOCK["tpu"]) * CHANNELS, (length, outer)
  assert short[1:] == long[1:]
  assert short[1] <= 2**16
  assert pallas.step_bytes(BATCH, 2, block=128, block_c=256) <= pallas.VMEM_BUDGET_BYTES


@pytest.mark.parametrize("platform", PLATFORMS)
def test_refused_calls_export_without_kernels(platform):
  """A time block the target cannot take (TPU: 128 lanes; GPU: a power of two) is refused for
  that target only; a batch whose single-channel step exceeds the VMEM budget is refused on
  the TPU, indices past int32 on the GPU."""
  target = TARGET[platform]
  for block, refused_on in ((64, "tpu"), (384, "gpu")):
    reason = pallas.unsupported_reason((BATCH, 1024, CHANNELS), jnp.float32, block=block,
                                       block_c=None, target=target)
    assert (reason is not None) == (target == refused_on), (block, reason)
    names = _api_names(platform, 1024, jnp.float32, block=block)
    assert (names == []) == (target == refused_on), (block, names)
  big = {"tpu": (4096, 1024, 8), "gpu": (64, 8192, 4096)}[target]
  reason = pallas.unsupported_reason(big, jnp.float32, block=None, block_c=None, target=target)
  assert reason is not None and ("VMEM" if target == "tpu" else "int32") in reason


def test_explicit_interpret_of_a_refused_call_raises_with_the_reason():
  """On this (CPU) host "pallas_interpret" lays the kernels out for the TPU."""
  u = jax.ShapeDtypeStruct((4096, 256, 8), jnp.float32)
  with pytest.raises(ValueError, match=r"pallas_interpret.*\(tpu kernel\).*VMEM"):
    jax.eval_shape(lambda u, k: pallas_kernels.long_conv(u, k, implementation="pallas_interpret"),
                   u, jax.ShapeDtypeStruct((256, 8), jnp.float32))
