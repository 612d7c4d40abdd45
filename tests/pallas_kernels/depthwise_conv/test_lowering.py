"""Depthwise convolution kernels lower for TPU (Mosaic) and GPU (Triton) from this CPU host:
forward and backward (dx and dw kernels) through the public API with implementation=None, on
ConvNeXt (7x7), RepLKNet (31x31) and short causal 1-D conv (4 and 31 taps) shapes, in float32
and bfloat16. Every kernel must appear in the exported module: a silent XLA fallback fails.
Shapes a kernel cannot take are refused before lowering, and None then exports XLA only.
Args are jax.ShapeDtypeStructs: nothing is allocated or run."""

import functools

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from tests.pallas_kernels.lowering import export_text, kernel_names

PLATFORMS = ("tpu", "cuda")
DTYPES = (jnp.float32, jnp.bfloat16)
# (name, x shape, w shape): realistic layer shapes
CASES = [
    ("conv2d_7x7_convnext", (2, 56, 56, 96), (7, 7, 96)),
    ("conv2d_7x7_wide_channels", (2, 64, 64, 256), (7, 7, 256)),
    ("conv2d_31x31_replknet", (1, 56, 56, 128), (31, 31, 128)),
    ("conv1d_4_taps", (4, 2048, 768), (4, 768)),
    ("conv1d_31_taps", (2, 1000, 256), (31, 256)),
]


def _op(x_shape):
  return "depthwise_conv1d" if len(x_shape) == 3 else "depthwise_conv2d"


def _loss_and_grads(x_shape, **kwargs):
  """(sum(y), dx, dw) of the public op: forward, dx and dw kernels in one program."""
  op = functools.partial(getattr(pallas_kernels, _op(x_shape)), **kwargs)
  return jax.value_and_grad(lambda x, w: jnp.sum(op(x, w).astype(jnp.float32)), (0, 1))


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,x_shape,w_shape", CASES, ids=[c[0] for c in CASES])
def test_forward_and_backward_lower_with_every_kernel(name, x_shape, w_shape, dtype, platform):
  del name
  args = jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct(w_shape, dtype)
  op = _op(x_shape)
  forward = kernel_names(export_text(getattr(pallas_kernels, op), *args, platform=platform),
                         platform)
  assert forward == [op]
  backward = kernel_names(export_text(_loss_and_grads(x_shape), *args, platform=platform),
                          platform)
  assert sorted(backward) == sorted([op, op + "_dx", op + "_dw"])


def test_a_block_one_target_refuses_exports_xla_there_and_the_kernel_elsewhere():
  """block_l=24 is a TPU tile (a multiple of 8) but not a Triton one (a power of two)."""
  args = jax.ShapeDtypeStruct((2, 512, 128), jnp.float32), jax.ShapeDtypeStruct((4, 128),
                                                                                jnp.float32)
  f = _loss_and_grads(args[0].shape, block_l=24)
  assert len(kernel_names(export_text(f, *args, platform="tpu"), "tpu")) == 3
  assert kernel_names(export_text(f, *args, platform="cuda"), "cuda") == []


def test_a_shape_no_kernel_takes_exports_xla_and_explicit_kernels_raise():
  """A 31x31 window over a 65536-wide image: over the TPU's VMEM at one row per tile, past
  Triton's int32 offsets on GPU."""
  args = (jax.ShapeDtypeStruct((1, 40, 2**16, 1024), jnp.float32),
          jax.ShapeDtypeStruct((31, 31, 1024), jnp.float32))
  for platform in PLATFORMS:
    text = export_text(pallas_kernels.depthwise_conv2d, *args, platform=platform)
    assert kernel_names(text, platform) == []
  with pytest.raises(ValueError, match="VMEM"):
    jax.eval_shape(functools.partial(pallas_kernels.depthwise_conv2d,
                                     implementation="pallas_interpret"), *args)
