"""The shared loss/update core (jaxlab.train.core) and the task objects (jaxlab.train.tasks)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, quant
from jaxlab.analysis.lr_sweep import scan_train
from jaxlab.errors import UserError
from jaxlab.train import core, tasks
from tests.train.test_fp8_state import BATCH, mlp

TX = optax.adam(1e-2)


def test_unknown_task_is_a_user_error_naming_the_key_and_the_tasks():
  with pytest.raises(UserError, match=r"config.data.task='seq2seq'; valid: classification, lm"):
    tasks.get("seq2seq")
  assert tasks.get("lm") is tasks.LM and hash(tasks.CLASSIFICATION)  # a static jit argument


def test_eval_sums_count_every_token_of_a_real_sequence_only():
  logits = jnp.zeros((2, 3, 5))
  batch = {"inputs": jnp.zeros((2, 3), jnp.int32), "targets": jnp.zeros((2, 3), jnp.int32),
           "mask": jnp.array([1, 0])}
  sums = tasks.LM.eval_sums(logits, batch)
  assert float(sums["count"]) == 3.0
  np.testing.assert_allclose(sums["loss"], 3 * np.log(5), rtol=1e-6)


def test_loss_and_grads_without_quant_state_is_the_task_loss_gradient():
  model = models.MLP(hidden_widths=(8,), num_classes=3)
  params = core.init_params_and_extra(model, jax.random.PRNGKey(0), BATCH["image"])[0]
  loss, metrics, grads, extra = core.loss_and_grads(model, params, {}, BATCH,
                                                    tasks.CLASSIFICATION)
  expected = jax.grad(lambda p: tasks.CLASSIFICATION.loss(
      model.apply({"params": p}, BATCH["image"]), BATCH))(params)
  assert extra == {} and float(loss) == float(metrics["loss"])
  jax.tree.map(np.testing.assert_array_equal, grads, expected)


def test_the_lr_sweep_scan_carries_the_quantization_state():
  """fp8 delayed-scaling histories advance through scan_train as through the train step."""
  model = mlp()
  _, extra0 = core.init_params_and_extra(model, jax.random.PRNGKey(0), BATCH["image"])
  batches = jax.tree.map(lambda x: np.stack([x] * 3), BATCH)
  _, extra, losses = jax.jit(lambda b: scan_train(model, TX, tasks.CLASSIFICATION, 0, b))(batches)
  before = jax.tree.leaves(extra0[quant.QUANT_STATE])
  after = jax.tree.leaves(extra[quant.QUANT_STATE])
  assert np.all(np.isfinite(losses)) and len(after) == len(before) > 0
  assert any(not np.array_equal(a, b) for a, b in zip(after, before))
