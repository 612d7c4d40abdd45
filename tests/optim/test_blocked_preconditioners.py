"""What Shampoo and SOAP share: vector leaves get AdamW exactly, and both solve an
ill-conditioned least-squares problem."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.optim.shampoo import shampoo
from jaxlab.optim.soap import soap
from tests.optim.blocked_problem import run, tiny_problem

WD = 0.1
# (factory, its default b1 and b2, a block size that splits the tiny problem's matrices)
OPTIMIZERS = {"shampoo": (shampoo, 0.9, 0.999, 3), "soap": (soap, 0.95, 0.95, 2)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_vector_leaf_is_adamw(name):
  factory, b1, b2, block_size = OPTIMIZERS[name]
  params, grads = tiny_problem({"w": (6, 4), "b": (4,)})
  got = run(factory(0.05, weight_decay=WD, block_size=block_size, precondition_every=2), params,
            grads)
  want = run(optax.adamw(0.05, b1, b2, 1e-8, weight_decay=WD), params, grads)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g["b"], w["b"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_reduces_least_squares_loss(name):
  factory = OPTIMIZERS[name][0]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(64, 8)) * np.geomspace(1, 10, 8), jnp.float32)  # ill-conditioned
  y = x @ jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  loss = lambda p: jnp.mean(jnp.square(x @ p["w"] + p["b"] - y))
  params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
  tx = factory(optax.cosine_decay_schedule(0.1, 100), block_size=4, precondition_every=2)

  @jax.jit
  def step(params, state):
    u, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, u), state

  state, start = tx.init(params), float(loss(params))
  for _ in range(100):
    params, state = step(params, state)
  assert float(loss(params)) < 1e-2 * start, (float(loss(params)), start)
