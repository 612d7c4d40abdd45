"""Shared helpers of the blocked-preconditioner tests (Shampoo, SOAP): a tiny problem of
matrix, 3-D and vector leaves, and a loop applying an optimizer to its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def run(tx, params, grads):
  """Params after each of the steps of `tx` on the gradients `grads`."""
  state, update, out = tx.init(params), jax.jit(tx.update), []
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


def tiny_problem(shapes, steps=5, seed=0, dtype=jnp.float32):
  """(params, [grads] * steps) of the given leaf shapes, normal random."""
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
  grads = [{k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
           for _ in range(steps)]
  return params, grads
