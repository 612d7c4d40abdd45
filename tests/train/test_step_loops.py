"""Chunked unrolled steps compute what one lax.scan and a plain loop of single steps compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models
from jaxlab.train import core, step_loops, tasks


def _batches(steps: int, image: bool):
  rng = np.random.default_rng(0)
  shape = (steps, 8, 8, 8, 1) if image else (steps, 8, 12)
  return {"image": rng.normal(size=shape).astype(np.float32),
          "label": rng.integers(0, 4, size=(steps, 8)).astype(np.int32)}


def _setup(model, batches):
  tx = optax.adam(1e-2)
  params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(0), batches["image"][0])
  return step_loops.optimizer_step(model, tx, tasks.CLASSIFICATION), (params, tx.init(params),
                                                                       extra)


def _one_by_one(step, carry, batches):
  """The reference: one jitted step per batch, in Python."""
  jstep = jax.jit(step)
  losses = []
  for t in range(len(batches["label"])):
    carry, loss = jstep(carry, jax.tree.map(lambda x, t=t: x[t], batches))
    losses.append(loss)
  return carry, jnp.stack(losses)


@pytest.mark.parametrize("model,image", [
    (models.MLP(hidden_widths=(16,), num_classes=4), False),
    (models.ResNet(width=4, blocks_per_stage=1, num_classes=4), True)], ids=["mlp", "resnet"])
def test_chunks_and_scan_match_single_steps(model, image):
  batches = _batches(7, image)  # chunk 3: calls of 3, 3 and a remainder of 1
  step, carry = _setup(model, batches)
  ref_carry, ref_losses = _one_by_one(step, carry, batches)
  chunked = step_loops.chunked_steps(step, carry, batches, chunk=3)
  scanned = jax.jit(step_loops.scan_steps, static_argnums=0)(step, carry, batches)
  for carry_, losses in (chunked, scanned):
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 carry_[0], ref_carry[0])
  assert ref_losses[-1] < ref_losses[0]  # it trained
  jax.tree.map(np.asarray, carry)  # the caller's carry was not donated away


def test_chunk_must_be_positive():
  batches = _batches(2, False)
  step, carry = _setup(models.MLP(hidden_widths=(4,), num_classes=4), batches)
  with pytest.raises(ValueError, match="chunk=0"):
    step_loops.chunked_steps(step, carry, batches, chunk=0)


def test_default_chunk_unrolls_conv_nets_only():
  image = jnp.zeros((1, 8, 8, 1))
  assert step_loops.has_convolution(models.ResNet(width=4, blocks_per_stage=1), image)
  assert not step_loops.has_convolution(models.MLP(hidden_widths=(4,), num_classes=4), jnp.zeros((1, 12)))
  assert step_loops.default_chunk(models.ResNet(width=4, blocks_per_stage=1), image) == 5
  assert step_loops.default_chunk(models.MLP(hidden_widths=(4,), num_classes=4), jnp.zeros((1, 12))) == 0
