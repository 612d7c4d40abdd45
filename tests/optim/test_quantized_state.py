"""Block-wise quantized optimizer state: trajectories close to the float32 optimizer's, int8
storage, ~4x / ~8x fewer bytes for the large leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.optim.quantized_state import (Quantized, dequantize, quantize, quantize_state,
                                          state_bytes)
from jaxlab.optim.shampoo import shampoo

N, STEPS, LR = 10_000, 50, 1e-3


def trajectory(tx, params, steps=STEPS, seed=0):
  """Parameters after each step of N(0, 1) gradients; the final state."""
  state, update, out = tx.init(params), jax.jit(tx.update), []
  for key in jax.random.split(jax.random.key(seed), steps):
    keys = jax.random.split(key, len(jax.tree.leaves(params)))
    grads = jax.tree.unflatten(jax.tree.structure(params),
                               [jax.random.normal(k, x.shape) for k, x in
                                zip(keys, jax.tree.leaves(params))])
    u, state = update(grads, state, params)
    params = optax.apply_updates(params, u)
    out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)]))
  return np.stack(out), state


def deviation(got, want, start):
  """Max over steps of ||p_q - p|| / ||p - p_0||: the error relative to the distance travelled."""
  return max(np.linalg.norm(g - w) / np.linalg.norm(w - start) for g, w in zip(got, want))


@pytest.mark.parametrize("bits", [8, 4])
def test_roundtrip_error_and_unsigned_blocks(bits):
  x = jax.random.normal(jax.random.key(0), (1000,))
  for y in (x, x * x):
    err = np.max(np.abs(dequantize(quantize(y, bits, 256)) - y)) / np.max(np.abs(y))
    assert err <= (1 / 127 if bits == 8 else 1 / 7) + 1e-6, err  # one step of the sqrt map at 1
  q = quantize(x * x, bits, 256)
  assert np.all(np.asarray(q.scales) < 0)  # non-negative blocks are flagged unsigned
  assert np.min(np.asarray(dequantize(q))) > 0  # no zero point: no v quantized to 0


# Byte ratios: 4 / (1 + 4 / 256) = 3.94 (8-bit), 4 / (0.5 + 4 / 256) = 7.76 (4-bit), less the
# padding of 10k elements to 40 blocks of 256: 3.85, 7.58.
@pytest.mark.parametrize("bits, bound, ratio", [(8, 0.03, 3.8), (4, 0.4, 7.5)])
@pytest.mark.parametrize("make", [lambda: optax.adam(LR),
                                  lambda: optax.adamw(LR, weight_decay=0.1)], ids=["adam", "adamw"])
def test_adam_trajectory_close_to_float32(make, bits, bound, ratio):
  params = {"w": jnp.full((N,), 0.5), "b": jnp.zeros(16)}
  start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  want, state32 = trajectory(make(), params)
  got, state = trajectory(quantize_state(make(), bits=bits), params)
  dev = deviation(got, want, start)
  print(f"{bits}-bit max relative deviation {dev:.4f}")
  assert dev < bound, dev
  mu, nu = state[0].mu, state[0].nu
  assert isinstance(mu["w"], Quantized) and mu["w"].codes.dtype == jnp.int8
  assert nu["w"].codes.dtype == jnp.int8 and nu["w"].scales.dtype == jnp.float32
  assert mu["b"].dtype == jnp.float32 and state[0].count.dtype == jnp.int32  # small / int: as is
  big = lambda s: state_bytes((s[0].mu["w"], s[0].nu["w"]))
  assert big(state32) / big(state) > ratio, big(state32) / big(state)


def test_shampoo_adam_state_quantized():
  # The vector's Adam moments (8192 elements) are quantized; the 16x16 matrix's statistics and
  # moments (256 elements) stay float32.
  params = {"w": jnp.full((16, 16), 0.5), "b": jnp.full((8192,), 0.5)}
  start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  make = lambda: shampoo(LR, block_size=8, precondition_every=2)
  want, state32 = trajectory(make(), params, steps=20)
  got, state = trajectory(quantize_state(make(), bits=8), params, steps=20)
  dev = deviation(got, want, start)
  print(f"shampoo 8-bit max relative deviation {dev:.4f}")
  assert dev < 0.03, dev
  leaves = state[0].leaves
  assert leaves["b"].mu.codes.dtype == jnp.int8 and leaves["b"].nu.codes.dtype == jnp.int8
  assert leaves["w"].l.dtype == jnp.float32 and leaves["w"].mu.dtype == jnp.float32
  assert state_bytes(state32) - state_bytes(state) > 0.7 * 2 * 8192 * 4
