"""The dense "xla" path (dense.py, hand-written VJP) against autodiff of an independent plain-jnp
softmax attention with an arbitrary boolean mask, its causal two-halves shortcut, exact zeros for
masked logits, and the mask argument's dispatch rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.flash_attention import dense
from tests.models.references import reference as plain_attention


def _dense(q, k, v, scale, causal, mask=None):
  return pallas_kernels.attention(q, k, v, scale=scale, causal=causal, mask=mask,
                                  implementation="xla")


def _check_values_and_grads(q, k, v, cot, scale, causal, mask=None, tol=2e-5):
  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, scale, causal, mask) * cot)

  np.testing.assert_allclose(jax.jit(_dense, static_argnums=(3, 4))(q, k, v, scale, causal, mask),
                             plain_attention(q, k, v, scale, causal, mask), rtol=tol, atol=tol)
  ours = jax.jit(jax.grad(loss(_dense), argnums=(0, 1, 2)))(q, k, v)
  ref = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("causal,kv_heads,q_len,with_mask",
                         [(True, 4, 7, False), (False, 2, 7, False), (True, 1, 3, False),
                          (True, 2, 7, True), (False, 4, 7, True)])
def test_values_and_gradients_match_autodiff_of_plain_attention(causal, kv_heads, q_len,
                                                                with_mask):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (2, q_len, 4, 8))
  k = jax.random.normal(keys[1], (2, 7, kv_heads, 8))
  v = jax.random.normal(keys[2], (2, 7, kv_heads, 8))
  mask = (jnp.arange(7) < jnp.array([5, 7])[:, None])[:, None, None, :] if with_mask else None
  _check_values_and_grads(q, k, v, jax.random.normal(keys[3], q.shape), 0.4, causal, mask)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_causal_halves_path_matches_plain_attention(kv_heads):
  """Long causal sequences take the path that skips the masked block; same values and grads."""
  L = dense.CAUSAL_SPLIT_MIN_LEN
  keys = jax.random.split(jax.random.PRNGKey(7), 4)
  q = jax.random.normal(keys[0], (1, L, 2, 8))
  k = jax.random.normal(keys[1], (1, L, kv_heads, 8))
  v = jax.random.normal(keys[2], (1, L, kv_heads, 8))
  _check_values_and_grads(q, k, v, jax.random.normal(keys[3], q.shape), 0.3, True)


def test_masked_logits_get_exactly_zero_probability():
  q = k = jnp.ones((1, 4, 1, 2))
  v = jnp.ones((1, 4, 1, 2)) * jnp.arange(4.0)[None, :, None, None]
  out = _dense(q, k, v, 1.0, True)
  np.testing.assert_array_equal(out[0, :, 0, 0], [0.0, 0.5, 1.0, 1.5])  # mean of visible values


def test_per_head_mask_and_fully_masked_rows():
  """A [B, H, Lq, Lk] mask hiding every key from one head's first query: that row is 0."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  q, k, v = (jax.random.normal(key, (1, 5, 2, 4)) for key in keys)
  mask = np.ones((1, 2, 5, 5), bool)
  mask[0, 1, 0, :] = False
  mask[0, 0, 2, 3:] = False
  out = _dense(q, k, v, 0.5, False, jnp.asarray(mask))
  np.testing.assert_array_equal(out[0, 0, 1], np.zeros(4))
  full = np.array(mask)
  full[0, 1, 0, 0] = True  # the reference needs one visible key per row; compare the others
  ref = plain_attention(q, k, v, 0.5, False, jnp.asarray(full))
  np.testing.assert_allclose(out[0, 1:], ref[0, 1:], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(out[0, 0, 0], ref[0, 0, 0], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(mask=jnp.ones((1, 1, 4, 4), jnp.float32)), "mask must be boolean"),
    (dict(mask=jnp.ones((1, 1, 4, 4), bool), implementation="xla_chunked"),
     "mask is supported by implementation='xla' only"),
    (dict(mask=jnp.ones((3, 1, 4, 4), bool)), "Incompatible shapes|cannot be broadcast"),
])
def test_mask_argument_errors(kw, match):
  q = jnp.zeros((2, 4, 2, 8))
  with pytest.raises(ValueError, match=match):
    pallas_kernels.attention(q, q, q, **kw)
