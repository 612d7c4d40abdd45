"""The Attention module's route through pallas_kernels.attention (every CPU implementation gives
the same output and gradients), the feature-major FeedForward against the token-major formula,
and the RoPE / qkv-split VJPs. (The attention kernels' own tests: tests/pallas_kernels.)"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import param
from jaxlab.errors import UserError
from jaxlab.models import layers, transformer


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


@pytest.mark.parametrize("positions", [np.arange(300), np.arange(40).reshape(2, 20) * 50])
def test_rope_from_numpy_positions_uses_constant_tables(positions):
  """NumPy positions: the rotation of a float64 reference to float32 rounding (the program's own
  float32 angles, from traced positions, are off by up to ~1e-4 rad at position 2,000), and no
  sine or cosine left in the compiled program; traced positions keep them (the control)."""
  from jaxlab.models import rope
  x = jax.random.normal(jax.random.PRNGKey(7), (2, positions.shape[-1], 2, 16))
  x64 = np.asarray(x, np.float64)
  ang = positions[..., None].astype(np.float64) * 1e4 ** (-np.arange(0, 16, 2) / 16)
  sin, cos = np.sin(ang)[..., None, :], np.cos(ang)[..., None, :]
  x1, x2 = x64[..., :8], x64[..., 8:]
  want = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  with_tables = jax.jit(lambda x: rope.apply_rope(x, positions))
  np.testing.assert_allclose(with_tables(x), want, rtol=0, atol=2e-6)
  traced = jax.jit(lambda x, p: rope.apply_rope(x, p))
  trig = re.compile(r"\b(sine|cosine)\(")
  assert not trig.search(with_tables.lower(x).compile().as_text())
  assert trig.search(traced.lower(x, jnp.asarray(positions)).compile().as_text())


def test_attention_module_routes_through_pallas_kernels_attention():
  """attention_impl selects pallas_kernels.attention's implementation: dense, chunked and the
  interpreted Pallas kernel give the same LM logits and gradients; a bad name names the key."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 24), 0, 256)
  kw = dict(d_model=32, num_layers=2, num_heads=2)
  lm = transformer.TransformerLM(**kw)
  params = lm.init(jax.random.PRNGKey(1), tokens)["params"]

  def loss_and_grads(impl):
    model = transformer.TransformerLM(**kw, block_options=transformer.BlockOptions(
        attention_impl=impl))
    f = lambda p: jnp.mean(model.apply({"params": p}, tokens) ** 2)  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)

  ref_loss, ref_grads = loss_and_grads("auto")
  for impl in ("xla", "xla_chunked", "pallas_interpret"):
    loss, grads = loss_and_grads(impl)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(UserError, match="config.model.attention_impl='flash'"):
    flash = transformer.BlockOptions(attention_impl="flash")
    transformer.TransformerLM(**kw, block_options=flash).init(jax.random.PRNGKey(1), tokens)
