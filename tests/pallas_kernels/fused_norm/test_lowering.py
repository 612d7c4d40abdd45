"""pallas_kernels.fused_norm lowered for the devices from this host (tests/pallas_kernels/
lowering.py): the public API with implementation=None, forward and backward (jax.vjp), exported
for "tpu" (Mosaic) and "cuda" (Triton) on realistic shapes must carry the forward kernel and the
backward kernel, so a silent XLA fallback fails; calls a target cannot take are refused by
unsupported_reason with the reason before lowering, and then export with no kernel call.
Arguments are jax.ShapeDtypeStructs: nothing runs."""

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels.fused_norm import pallas
from tests.pallas_kernels.lowering import export_text, kernel_names

PLATFORMS = ("tpu", "cuda")
TARGET = {"tpu": "tpu", "cuda": "gpu"}
# (kind, bias, layer_index): LayerNorm / RMSNorm, with and without bias and LayerNorm Scaling.
NORMS = [("layernorm", True, None), ("layernorm", False, 6), ("rmsnorm", False, None),
         ("rmsnorm", True, 12)]
# a GPT-2 sized activation (D = 768: not a power of two, masked on GPU), a square matrix, and
# a row count that leaves a partial last tile with an odd feature dim
SHAPES = [((8, 2048, 768), jnp.bfloat16), ((4096, 4096), jnp.float32),
          ((8, 2048, 768), jnp.float32), ((4096, 4096), jnp.bfloat16),
          ((3, 100, 1000), jnp.float32)]


def _export(platform, shape, dtype, kind="layernorm", bias=True, layer_index=None, **kw):
  """Exported text of (y, vjp(dy)) of pallas_kernels.fused_norm (implementation None)."""
  features = shape[-1]

  def step(x, scale, b, dy):
    fn = lambda x, scale, b: pallas_kernels.fused_norm(
        x, scale, b if bias else None, kind=kind, layer_index=layer_index, **kw)
    y, vjp = jax.vjp(fn, x, scale, b)
    return y, vjp(dy)

  args = (jax.ShapeDtypeStruct(shape, dtype), jax.ShapeDtypeStruct((features,), dtype),
          jax.ShapeDtypeStruct((features,), dtype), jax.ShapeDtypeStruct(shape, dtype))
  return export_text(step, *args, platform=platform)


@pytest.mark.parametrize("kind,bias,layer_index", NORMS)
@pytest.mark.parametrize("shape,dtype", SHAPES[:2])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_forward_and_backward_kernels_lower(platform, shape, dtype, kind, bias, layer_index):
  text = _export(platform, shape, dtype, kind, bias, layer_index)
  assert sorted(kernel_names(text, platform)) == [f"fused_{kind}", f"fused_{kind}_bwd"]


@pytest.mark.parametrize("shape,dtype", SHAPES[2:])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_other_shapes_and_dtypes_lower(platform, shape, dtype):
  assert sorted(kernel_names(_export(platform, shape, dtype), platform)) == [
      "fused_layernorm", "fused_layernorm_bwd"]


def test_grad_of_a_loss_carries_both_kernels():
  """jax.grad (not only vjp) of a loss through two norms: two forward, two backward calls."""
  def loss(x, scale):
    h = pallas_kernels.fused_norm(x, scale, kind="rmsnorm")
    return jnp.sum(pallas_kernels.fused_norm(h, scale, kind="rmsnorm", layer_index=2) ** 2)

  for platform in PLATFORMS:
    text = export_text(jax.grad(loss, argnums=(0, 1)),
                       jax.ShapeDtypeStruct((2, 512, 1024), jnp.bfloat16),
                       jax.ShapeDtypeStruct((1024,), jnp.bfloat16), platform=platform)
    assert sorted(kernel_names(text, platform)) == ["fused_rmsnorm"] * 2 + [
        "fused_rmsnorm_bwd"] * 2, platform


def test_kernel_parameters_follow_the_target():
  """TPU: a bfloat16 tile has a multiple of 16 rows (or all rows) and the full feature dim.
  GPU: power-of-two tiles, the features padded to the next power of two."""
  assert pallas.default_block_rows(16384, 768, jnp.bfloat16, "tpu") == 256
  assert pallas.default_block_rows(20, 768, jnp.bfloat16, "tpu") == 20
  assert pallas.default_block_rows(4096, 4096, jnp.float32, "tpu") % 8 == 0
  for rows, features in ((16384, 768), (4096, 4096), (3, 1000), (1, 20000)):
    block = pallas.default_block_rows(rows, features, jnp.float32, "gpu")
    assert block & (block - 1) == 0 and block * pallas.next_pow2(features) <= max(
        pallas.GPU_TILE_ELEMS, pallas.next_pow2(features))


@pytest.mark.parametrize("platform", PLATFORMS)
def test_refused_calls_export_without_kernels(platform):
  """Per target, with the reason: a bfloat16 block_rows of 8 (TPU: 16 sublanes; a power of two,
  fine for Triton); a feature dim whose padded row exceeds a Triton program (GPU) / whose
  smallest tile exceeds the VMEM budget (TPU). None then runs "xla" for that platform only."""
  target = TARGET[platform]
  refused_small_block = pallas.unsupported_reason(64, 256, jnp.bfloat16, block_rows=8,
                                                  target=target)
  assert (refused_small_block is not None) == (target == "tpu")
  names = kernel_names(_export(platform, (64, 256), jnp.bfloat16, block_rows=8), platform)
  assert (names == []) == (target == "tpu")

  shape = (16, 2**20)
  reason = pallas.unsupported_reason(shape[0], shape[1], jnp.float32, block_rows=None,
                                     target=target)
  assert reason is not None and ("Triton" if target == "gpu" else "VMEM") in reason
  assert kernel_names(_export(platform, shape, jnp.float32), platform) == []


def test_explicit_interpret_of_a_refused_call_raises_with_the_reason():
  """On this (CPU) host "pallas_interpret" lays the kernels out for the TPU."""
  with pytest.raises(ValueError, match=r"pallas_interpret.*\(tpu kernel\).*VMEM"):
    jax.eval_shape(lambda x, s: pallas_kernels.fused_norm(x, s, implementation="pallas_interpret"),
                   jax.ShapeDtypeStruct((16, 2**20), jnp.float32),
                   jax.ShapeDtypeStruct((2**20,), jnp.float32))
