"""Losses and metrics per task, as pure functions of (logits, batch).

`loss_and_metrics` gives the mean training loss; `eval_sums` gives masked sums so an eval pass
over padded batches can be reduced exactly (sum / count) on the host.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import UserError

TASKS = ("classification", "lm")


def model_inputs(batch: dict, task: str) -> jax.Array:
  if task == "classification":
    return batch["image"]
  if task == "lm":
    return batch["inputs"]
  raise UserError(f"config.data.task={task!r}; valid: {', '.join(TASKS)}")


def _targets(batch: dict, task: str) -> jax.Array:
  return batch["label"] if task == "classification" else batch["targets"]


def _token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def loss_and_metrics(logits: jax.Array, batch: dict, task: str) -> tuple[jax.Array, dict]:
  """Mean cross-entropy (per example, or per token for the LM) and accuracy."""
  targets = _targets(batch, task)
  loss = _token_losses(logits, targets).mean()
  accuracy = (logits.argmax(-1) == targets).mean()
  return loss, {"loss": loss, "accuracy": accuracy}


def eval_sums(logits: jax.Array, batch: dict, task: str) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over real (mask = 1) examples or tokens."""
  targets = _targets(batch, task)
  mask = batch["mask"].astype(jnp.float32)
  losses = _token_losses(logits, targets)
  correct = (logits.argmax(-1) == targets).astype(jnp.float32)
  if task == "lm":  # mask is per sequence; every token of a real sequence counts
    mask = jnp.broadcast_to(mask[:, None], targets.shape)
  return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


def finish_eval(sums: dict[str, Any]) -> dict[str, float]:
  count = float(sums["count"])
  metrics = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
  return metrics
