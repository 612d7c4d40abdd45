"""Tasks: what a batch feeds the model and how logits are scored, one frozen object per task.

`Task.loss_and_metrics` gives the mean training loss; `Task.eval_sums` gives masked sums so an
eval pass over padded batches can be reduced exactly (sum / count) on the host. Look a task up
once with `get(config.data.task)`.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
  """A supervised task: the model reads batch[inputs_key] and predicts integer batch[targets_key]
  (one target per example, or per token) under softmax cross-entropy. Hashable: a static jit
  argument."""
  name: str
  inputs_key: str
  targets_key: str

  def inputs(self, batch: dict) -> jax.Array:
    return batch[self.inputs_key]

  def targets(self, batch: dict) -> jax.Array:
    return batch[self.targets_key]

  def loss_and_metrics(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Mean cross-entropy (per example, or per token for the LM) and accuracy."""
    targets = self.targets(batch)
    loss = _token_losses(logits, targets).mean()
    accuracy = (logits.argmax(-1) == targets).mean()
    return loss, {"loss": loss, "accuracy": accuracy}

  def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
    """The mean training loss alone (a loss_fn(logits, batch) for the depth diagnostics)."""
    return self.loss_and_metrics(logits, batch)[0]

  def eval_sums(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Sums of loss and correct predictions over real (mask = 1) examples; the mask is per
    example, so every target (token) of a real example counts."""
    targets = self.targets(batch)
    mask = batch["mask"].astype(jnp.float32)
    losses = _token_losses(logits, targets)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (targets.ndim - 1)), targets.shape)
    return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


CLASSIFICATION = Task("classification", inputs_key="image", targets_key="label")
LM = Task("lm", inputs_key="inputs", targets_key="targets")
TASKS = {t.name: t for t in (CLASSIFICATION, LM)}


def get(name: str) -> Task:
  """The task called `name` (config.data.task); a UserError naming the valid ones otherwise."""
  if name not in TASKS:
    raise UserError(f"config.data.task={name!r}; valid: {', '.join(TASKS)}")
  return TASKS[name]


def as_task(task: "Task | str") -> Task:
  """`task` itself, or the task of that name (notebooks may pass 'classification' / 'lm')."""
  return get(task) if isinstance(task, str) else task


def _token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def finish_eval(sums: dict[str, Any]) -> dict[str, float]:
  """Mean loss and accuracy from summed eval_sums."""
  count = float(sums["count"])
  return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
