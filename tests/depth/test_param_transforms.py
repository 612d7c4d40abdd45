"""Hyperspherical projection (SimbaV2) keeps unit norms through training; weight norm's
eq.-3 VJP matches autodiff of the explicit formula and is orthogonal to v."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, param
from jaxlab.depth import param_transforms as pt

RNG = np.random.default_rng(0)


def _normal(*shape):
  return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


def _column_norms(w):
  return np.linalg.norm(np.asarray(w).reshape(-1, w.shape[-1]), axis=0)


def test_sphere_axes_of_lm_are_fan_in_axes_of_hidden_kernels():
  model = models.TransformerLM(vocab_size=16, d_model=16, num_layers=1, num_heads=2, max_len=8)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
  axes = pt.sphere_axes(param.param_info(boxed["params"]))
  assert axes["block_0"]["mlp"]["up"]["kernel"] == (0,)
  assert axes["block_0"]["attn_norm"]["scale"] is None
  assert axes["embed"]["embedding"] is None and axes["readout"]["kernel"] is None
  assert pt.fan_in_axes(4) == (0, 1, 2)  # HWIO conv: one filter per output channel


def test_projection_keeps_unit_norms_after_adam_updates():
  params = {"dense": _normal(12, 5), "conv": _normal(3, 3, 2, 4), "bias": _normal(5)}
  axes = {"dense": (0,), "conv": (0, 1, 2), "bias": None}
  params = pt.hyperspherical_init(params, axes)
  np.testing.assert_allclose(_column_norms(params["dense"]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(_column_norms(params["conv"]), 1.0, rtol=1e-6)
  tx = optax.chain(optax.adam(0.1), pt.hyperspherical_projection(axes))
  plain = optax.adam(0.1)
  state, p_state = tx.init(params), plain.init(params)
  step = jax.jit(tx.update)
  bias = params["bias"]
  for _ in range(5):
    grads = jax.tree.map(lambda p: _normal(*p.shape), params)
    u, state = step(grads, state, params)
    pu, p_state = plain.update(grads, p_state, params)
    moved = float(jnp.max(jnp.abs(u["dense"])))
    params = optax.apply_updates(params, u)
    bias = bias + pu["bias"]
    assert moved > 1e-3  # the weights really moved
    np.testing.assert_allclose(_column_norms(params["dense"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(_column_norms(params["conv"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(params["bias"], bias, rtol=1e-6)  # unwatched: plain Adam
  with pytest.raises(ValueError, match="needs params"):
    tx.update(grads, state)


def test_project_to_sphere_axis_errors():
  with pytest.raises(ValueError, match="axis"):
    pt.project_to_sphere(_normal(3, 4), axes=2)
  with pytest.raises(ValueError, match=">= 2 axes"):
    pt.fan_in_axes(1)


def _explicit(v, g, axes):
  return jnp.expand_dims(g, axes) * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


@pytest.mark.parametrize("shape,axis", [((7, 5), 0), ((7, 5), 1), ((3, 3, 2, 4), (0, 1, 2))])
def test_weight_norm_value_and_gradient_match_autodiff_of_the_formula(shape, axis):
  axes = (axis,) if isinstance(axis, int) else axis
  v = _normal(*shape)
  g = _normal(*[d for i, d in enumerate(shape) if i not in axes])
  c = _normal(*shape)
  loss = lambda f: lambda v, g: jnp.sum(jnp.sin(f(v, g)) * c)  # noqa: E731
  np.testing.assert_allclose(pt.weight_norm(v, g, axis), _explicit(v, g, axes), rtol=1e-6)
  ours = jax.grad(loss(lambda v, g: pt.weight_norm(v, g, axis)), argnums=(0, 1))(v, g)
  ref = jax.grad(loss(lambda v, g: _explicit(v, g, axes)), argnums=(0, 1))(v, g)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # projection property (Salimans & Kingma eq. 3): grad_v is orthogonal to v per output unit
  dv = ours[0]
  dots = jnp.sum(dv * v, axis=axes)
  scale = jnp.sqrt(jnp.sum(dv * dv, axis=axes) * jnp.sum(v * v, axis=axes))
  np.testing.assert_allclose(dots / scale, 0.0, atol=1e-5)
  # hence an SGD step grows the norm: ||v - lr dv||^2 = ||v||^2 + lr^2 ||dv||^2
  lr = 0.5
  after = jnp.sum(jnp.square(v - lr * dv), axis=axes)
  np.testing.assert_allclose(after, jnp.sum(v * v, axis=axes) + lr**2 * jnp.sum(dv * dv, axis=axes),
                             rtol=1e-5)


def test_weight_norm_decompose_roundtrip_and_shape_error():
  w = _normal(6, 3)
  v, g = pt.weight_norm_decompose(w)
  np.testing.assert_allclose(pt.weight_norm(v, g), w, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="g has shape"):
    pt.weight_norm(w, jnp.ones(6))
