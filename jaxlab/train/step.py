"""The pure, jitted train and eval steps (module-level functions; state is donated)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.train import stats, tasks
from jaxlab.train.state import TrainState


class Static:
  """Wraps an unhashable value (e.g. a pytree of shardings) as a static jit argument.

  Hashes by identity: build it once per run so the step compiles once.
  """

  def __init__(self, value: Any):
    self.value = value


def _constrain(tree: Any, shardings: Static | None) -> Any:
  if shardings is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, shardings.value)


@functools.partial(
    jax.jit,
    static_argnames=("model", "tx", "task", "with_stats", "state_sharding"),
    donate_argnames=("state",),
)
def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: str,
    with_stats: bool = False,
    state_sharding: Static | None = None,
) -> tuple[TrainState, dict]:
  """One optimizer update. Returns the new state and scalar metrics (+ per-layer rms)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits = model.apply({"params": params}, tasks.model_inputs(batch, task), train=True,
                         rngs={"dropout": dropout_rng})
    return tasks.loss_and_metrics(logits, batch, task)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)
  if with_stats:
    metrics.update(stats.per_layer_rms(state.params, "rms_params"))
    metrics.update(stats.per_layer_rms(grads, "rms_grads"))
    metrics.update(stats.per_layer_rms(updates, "rms_updates"))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return _constrain(new_state, state_sharding), metrics


@functools.partial(jax.jit, static_argnames=("model", "task"))
def eval_step(params: Any, batch: dict, *, model: nn.Module, task: str) -> dict:
  """Masked sums of loss / correct / count over one eval batch."""
  logits = model.apply({"params": params}, tasks.model_inputs(batch, task), train=False)
  return tasks.eval_sums(logits, batch, task)


def sum_trees(a: dict | None, b: dict) -> dict:
  return b if a is None else jax.tree.map(jnp.add, a, b)
