"""Every kernel states its compiler (issue 14, items 1 and 5): each pallas_call that the
dispatch traces names Mosaic TPU parameters with one dimension semantic per grid axis, or
Triton's parameters (jax >= 0.10 would otherwise lower a GPU pallas_call to Mosaic GPU, which
these kernels are not written for). Checked on the jaxpr of each op's forward + backward through
implementation=None, which traces the TPU and the GPU kernels into one platform_dependent."""

import jax
import jax.numpy as jnp
import pytest
from jax._src import core
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

import pallas_kernels as pk

BF16, F32 = jnp.bfloat16, jnp.float32


def _sds(shape, dtype=F32):
  return jax.ShapeDtypeStruct(shape, dtype)


def _grad_all(fn, *args):
  """jaxpr of the gradient of sum(fn(*args)) in every floating argument."""
  idx = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
  loss = lambda *a: fn(*a).astype(F32).sum()
  return jax.make_jaxpr(jax.grad(loss, argnums=idx))(*args)


def _int8_args():
  return (_sds((512, 1024), jnp.int8), _sds((1024, 512), jnp.int8), _sds((512,)), _sds((512,)))


CASES = {
    "attention": lambda: _grad_all(lambda q, k, v: pk.attention(q, k, v, causal=True),
                                   _sds((2, 512, 8, 64), BF16), _sds((2, 512, 1, 64), BF16),
                                   _sds((2, 512, 1, 64), BF16)),
    "depthwise_conv2d": lambda: _grad_all(pk.depthwise_conv2d, _sds((2, 56, 56, 128)),
                                          _sds((7, 7, 128))),
    "depthwise_conv1d": lambda: _grad_all(pk.depthwise_conv1d, _sds((2, 1024, 256)),
                                          _sds((4, 256))),
    "long_conv": lambda: _grad_all(pk.long_conv, _sds((2, 1024, 256)), _sds((1024, 256))),
    "fused_norm": lambda: _grad_all(lambda x, s, b: pk.fused_norm(x, s, b),
                                    _sds((8, 256, 768), BF16), _sds((768,)), _sds((768,))),
    "int8_matmul": lambda: jax.make_jaxpr(jax.grad(
        lambda xs, ws, x_q, w_q: pk.int8_matmul(x_q, w_q, xs, ws).sum(), argnums=(0, 1)))(
            *_int8_args()[2:], *_int8_args()[:2]),
}


def _pallas_calls(jaxpr: core.Jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, core.ClosedJaxpr):
          yield from _pallas_calls(sub.jaxpr)
        elif isinstance(sub, core.Jaxpr):
          yield from _pallas_calls(sub)


@pytest.mark.parametrize("op", sorted(CASES))
def test_every_kernel_names_its_compiler(op):
  calls = list(_pallas_calls(CASES[op]().jaxpr))
  tpu = [c for c in calls if isinstance(c.params["compiler_params"], pltpu.CompilerParams)]
  gpu = [c for c in calls if isinstance(c.params["compiler_params"], pltriton.CompilerParams)]
  assert tpu and gpu, f"{op}: {len(tpu)} TPU and {len(gpu)} Triton kernels traced"
  assert len(tpu) + len(gpu) == len(calls), f"{op}: a pallas_call without compiler params"
  for call in tpu:
    grid = call.params["grid_mapping"].grid
    semantics = call.params["compiler_params"].dimension_semantics
    assert semantics is not None and len(semantics) == len(grid), (op, grid, semantics)
    assert set(semantics) <= {"parallel", "arbitrary"}, (op, semantics)
