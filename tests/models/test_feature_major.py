"""jaxlab.models.feature_major: W^T a and its gradients against autodiff of a plain einsum, the
compiled CPU program's products all in YNNPACK (none left to Eigen's A^T B), and the plain
dot_general on GPU / TPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.models import feature_major, layers
from tests.pallas_kernels.lowering import export_text


def _loss(matmul, w, a, c):
  return jnp.sum(jnp.tanh(matmul(w, a)) * c)


def _reference(w, a):
  return jnp.einsum("kf,k...->f...", w, a)


@pytest.mark.parametrize("K,F,tokens", [(16, 64, (40,)), (64, 16, (3, 40)), (32, 32, (24,))])
def test_values_and_gradients_match_autodiff_of_the_plain_product(K, F, tokens):
  kw, ka, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  w = jax.random.normal(kw, (K, F))
  a = jax.random.normal(ka, (K,) + tokens)
  c = jax.random.normal(kc, (F,) + tokens)
  np.testing.assert_allclose(feature_major.matmul(w, a), _reference(w, a), rtol=1e-5, atol=1e-5)
  want = jax.jit(jax.grad(lambda w, a: _loss(_reference, w, a, c), (0, 1)))(w, a)
  got = jax.jit(jax.grad(lambda w, a: _loss(feature_major.matmul, w, a, c), (0, 1)))(w, a)
  for g, r in zip(got, want):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_vmapped_gradients_match_per_example_ones():
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 32))
  a = jax.random.normal(jax.random.PRNGKey(2), (8, 20))
  grad = jax.grad(lambda w: _loss(feature_major.matmul, w, a, 1.0))
  batched = jax.jit(jax.vmap(grad))(w)
  for i in range(3):
    np.testing.assert_allclose(batched[i], grad(w[i]), rtol=1e-5, atol=1e-5)


def _eigen_dots(fn, *args) -> list[str]:
  """The dots of fn's compiled CPU program that XLA left outside a YNNPACK fusion."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  return re.findall(r"= f32\[[\d,]*\]\S* dot\(", entry)


def _feed_forward_eigen_dots() -> list[str]:
  """_eigen_dots of FeedForward's forward and backward (grads of params and input)."""
  ff = layers.FeedForward(256, activation="gelu_tanh", use_bias=False)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 64))
  params = ff.init(jax.random.PRNGKey(4), x)
  grads = jax.grad(lambda params, x: jnp.sum(ff.apply(params, x) ** 2), (0, 1))
  return _eigen_dots(grads, params, x)


def test_cpu_program_gives_every_feed_forward_product_to_the_fast_gemm(monkeypatch):
  """Forward and backward of FeedForward: six products, none left as an Eigen A^T B dot. The
  plain dot_general (the control: what Dense computed before, autodiff's transposes) leaves four
  of them there, so the check can fail."""
  assert _feed_forward_eigen_dots() == []
  monkeypatch.setattr(feature_major, "matmul", feature_major._plain)  # pylint: disable=protected-access
  assert len(_feed_forward_eigen_dots()) >= 2


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_accelerators_get_the_plain_product(platform):
  """No optimization barrier (the CPU form's) in the program exported for a GPU or TPU."""
  w = jax.ShapeDtypeStruct((64, 256), jnp.float32)
  a = jax.ShapeDtypeStruct((64, 128), jnp.float32)
  step = lambda w, a: jax.grad(lambda w, a: _loss(feature_major.matmul, w, a, 1.0), (0, 1))(w, a)
  text = export_text(step, w, a, platform=platform)
  assert "dot_general" in text
  assert "optimization_barrier" not in text
  cpu = export_text(step, w, a, platform="cpu")
  assert "optimization_barrier" in cpu
