"""The attention core's hand-written VJP against autodiff of an independent plain-jnp reference,
and the feature-major FeedForward against the token-major formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import param
from jaxlab.models import attention, layers
from tests.models.references import reference


@pytest.mark.parametrize("causal,kv_heads,q_len,with_mask",
                         [(True, 4, 7, False), (False, 2, 7, False), (True, 1, 3, False),
                          (True, 2, 7, True)])
def test_gradients_match_autodiff_of_reference(causal, kv_heads, q_len, with_mask):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (2, q_len, 4, 8))
  k = jax.random.normal(keys[1], (2, 7, kv_heads, 8))
  v = jax.random.normal(keys[2], (2, 7, kv_heads, 8))
  cot = jax.random.normal(keys[3], q.shape)
  mask = (jnp.arange(7) < jnp.array([5, 7])[:, None])[:, None, None, :] if with_mask else None

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, scale=0.4, causal=causal, mask=mask) * cot)

  ours = jax.jit(jax.grad(loss(attention.dot_product_attention), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_masked_logits_get_exactly_zero_probability():
  q = k = v = jnp.ones((1, 4, 1, 2))
  v = v * jnp.arange(4.0)[None, :, None, None]
  out = attention.dot_product_attention(q, k, v, scale=1.0, causal=True)
  np.testing.assert_array_equal(out[0, :, 0, 0], [0.0, 0.5, 1.0, 1.5])  # mean of visible values


def test_feed_forward_equals_token_major_formula():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
  ff = layers.FeedForward(16, activation="gelu_tanh", use_bias=True)
  params = param.unbox(ff.init(jax.random.PRNGKey(2), x)["params"])
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases
  up, down = params["up"], params["down"]
  ref = jax.nn.gelu(x @ up["kernel"] + up["bias"], approximate=True) @ down["kernel"] + down["bias"]
  np.testing.assert_allclose(ff.apply({"params": params}, x), ref, rtol=1e-5, atol=1e-5)


def test_rope_and_qkv_split_vjps_match_autodiff():
  """Both custom VJPs (rotation transpose, split -> concatenate) against jax.vjp of plain jnp."""
  from jaxlab.models import rope
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 3, 8))
  g = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  pos = jnp.arange(6)

  def plain_rope(x):
    ang = rope.rope_angles(pos, 8)[..., None, :]
    x1, x2 = x[..., :4], x[..., 4:]
    return jnp.concatenate([x1 * jnp.cos(ang) - x2 * jnp.sin(ang),
                            x2 * jnp.cos(ang) + x1 * jnp.sin(ang)], -1)

  ours = jax.vjp(lambda x: rope.apply_rope(x, pos), x)[1](g)[0]
  np.testing.assert_allclose(ours, jax.vjp(plain_rope, x)[1](g)[0], rtol=1e-5, atol=1e-6)

  y = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 10))
  cots = tuple(jax.random.normal(jax.random.PRNGKey(6 + i), (2, 3, n)) for i, n in enumerate((4, 2, 4)))
  ours = jax.vjp(lambda y: layers.split_last(y, (4, 6)), y)[1](cots)[0]
  ref = jax.vjp(lambda y: (y[..., :4], y[..., 4:6], y[..., 6:]), y)[1](cots)[0]
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_causal_halves_path_matches_reference(kv_heads):
  """Long causal sequences take the path that skips the masked block; same values and grads."""
  L = attention.CAUSAL_SPLIT_MIN_LEN
  keys = jax.random.split(jax.random.PRNGKey(7), 4)
  q = jax.random.normal(keys[0], (1, L, 2, 8))
  k = jax.random.normal(keys[1], (1, L, kv_heads, 8))
  v = jax.random.normal(keys[2], (1, L, kv_heads, 8))
  cot = jax.random.normal(keys[3], q.shape)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, scale=0.3, causal=True) * cot)

  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, scale=0.3, causal=True),
                             reference(q, k, v, 0.3, True), rtol=2e-5, atol=2e-5)
  ours = jax.jit(jax.grad(loss(attention.dot_product_attention), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
