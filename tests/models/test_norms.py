"""jaxlab.models.norms through pallas_kernels.fused_norm: on CPU bit-identical (forward and
gradients) to the plain-jnp formulas the layers computed before, under SP and u-muP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import param
from jaxlab.models import norms
from jaxlab.models.context import LayerContext
from jaxlab.models.layers import scale_param
from jaxlab.param.roles import BIAS, NORM


def _plain(module, params, x):
  """The pre-kernel LayerNorm / RMSNorm: f32 statistics, then gain and bias (scale_param)."""
  p, d = module.ctx.parametrization, x.shape[-1]
  batch = x.size // d
  x = x.astype(jnp.float32)
  if isinstance(module, norms.LayerNorm):
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + module.epsilon)
  if module.use_scale:
    y = y * scale_param(params["scale"], p.op_scales(NORM, d, d, batch))
  if module.use_bias:
    y = y + scale_param(params["bias"], p.op_scales(BIAS, 1, d, batch))
  return y.astype(module.ctx.dtype)


@pytest.mark.parametrize("parametrization", [param.SP(), param.UMuP()])
@pytest.mark.parametrize("cls,kw", [(norms.LayerNorm, {}), (norms.RMSNorm, {}),
                                    (norms.LayerNorm, {"use_scale": False}),
                                    (norms.RMSNorm, {"use_bias": True})])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_path_matches_plain(parametrization, cls, kw, dtype):
  """The module's fused_norm path against plain autodiff of the formula: the same loss bit for
  bit (the forward is the same arithmetic); gradients to float32 rounding (fused_norm's "xla"
  path writes the backward out, summing in another order)."""
  ctx = LayerContext(parametrization, dtype=dtype)
  module = cls(ctx=ctx, epsilon=1e-5, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 24)).astype(dtype) * 3 + 1
  params = param.unbox(module.init(jax.random.PRNGKey(1), x)["params"])
  params = jax.tree.map(lambda a: a + jnp.linspace(-0.5, 0.5, a.size, dtype=a.dtype), params)

  def loss(fn):
    return jax.jit(jax.value_and_grad(
        lambda p, x: jnp.sum(jnp.sin(fn(p, x).astype(jnp.float32))), argnums=(0, 1)))

  got = loss(lambda p, x: module.apply({"params": p}, x))(params, x)
  want = loss(lambda p, x: _plain(module, p, x))(params, x)
  np.testing.assert_array_equal(got[0], want[0])
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=2e-5,
                               atol=1e-6)


def test_crmsnorm_stays_plain():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7))
  module = norms.CRMSNorm(use_scale=True)
  params = module.init(jax.random.PRNGKey(1), x)
  full = jnp.concatenate([x, -jnp.sum(x, -1, keepdims=True)], -1)
  want = full[:, :-1] / jnp.sqrt(jnp.mean(jnp.square(full), -1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(module.apply(params, x), want, rtol=1e-6)
