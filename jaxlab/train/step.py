"""The pure, jitted train and eval steps (module-level functions; state is donated)."""

import contextlib
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.analysis import depth_diagnostics
from jaxlab.train import core, stats, tasks
from jaxlab.train.state import TrainState


class Static:
  """Wraps an unhashable value (e.g. a pytree of shardings) as a static jit argument.

  Hashes by identity: build it once per run so the step compiles once.
  """

  def __init__(self, value: Any):
    self.value = value


def _mesh_context(shardings: Static | None):
  """The mesh of the state's shardings as the abstract mesh in context while tracing, so the
  model's tensor-parallel activation constraints see its 'model' axis
  (jaxlab.sharding.tensor_parallel); no mesh without shardings."""
  if shardings is None:
    return contextlib.nullcontext()
  mesh = jax.tree.leaves(shardings.value)[0].mesh
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


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
    task: tasks.Task,
    with_stats: bool = False,
    state_sharding: Static | None = None,
) -> tuple[TrainState, dict]:
  """One optimizer update (jaxlab.train.core). Returns the new state and scalar
  metrics (+ per-layer rms); the quantization state in state.extra advances with it."""
  with _mesh_context(state_sharding):
    _, metrics, grads, extra = core.loss_and_grads(model, state.params, state.extra, batch, task)
  params, opt_state, updates = core.apply_update(tx, state.params, state.opt_state, grads)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)
  if with_stats:
    metrics.update(stats.per_layer_rms(state.params, "rms_params"))
    metrics.update(stats.per_layer_rms(grads, "rms_grads"))
    metrics.update(stats.per_layer_rms(updates, "rms_updates"))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
  return _constrain(new_state, state_sharding), metrics


@functools.partial(jax.jit, static_argnames=("model", "task"))
def eval_step(params: Any, extra: dict, batch: dict, *, model: nn.Module,
              task: tasks.Task) -> dict:
  """Masked sums of loss / correct / count over one eval batch (extra: TrainState.extra, its
  quantization state read but not updated)."""
  return task.eval_sums(core.logits(model, params, extra, batch, task), batch)


@functools.partial(jax.jit, static_argnames=("model", "task"))
def depth_metrics_step(params: Any, extra: dict, batch: dict, *, model: nn.Module,
                       task: tasks.Task) -> dict:
  """jaxlab.analysis.depth_diagnostics.depth_metrics on one batch (a model with residual blocks
  named block_<i>): residual-stream variance after each block and its last/first ratio, angular
  distance between consecutive blocks' inputs, per-block gradient norms (max/min, CV) and the
  loss increase when each block is removed. extra: TrainState.extra (its quantization state is
  read, not advanced)."""
  _, _, grads, _ = core.loss_and_grads(model, params, extra, batch, task)
  return depth_diagnostics.depth_metrics(model, params, task.inputs(batch), grads=grads,
                                         batch=batch, loss_fn=task.loss, extra=extra)


def sum_trees(a: dict | None, b: dict) -> dict:
  return b if a is None else jax.tree.map(jnp.add, a, b)
