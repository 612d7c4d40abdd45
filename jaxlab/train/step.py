"""The pure, jitted train and eval steps (module-level functions; state is donated)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab import quant
from jaxlab.analysis import depth_diagnostics
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
  """One optimizer update. Returns the new state and scalar metrics (+ per-layer rms).

  With fp8 delayed scaling (state.extra['quant_state']) the loss is also differentiated with
  respect to the quantization state: the cotangents of its zero probes are this step's amaxes,
  which enter the new amax histories (jaxlab.quant.fp8)."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  quant_state = state.extra.get(quant.QUANT_STATE)

  def loss_fn(params, quant_state):
    variables = {"params": params}
    if quant_state is not None:
      variables[quant.QUANT_STATE] = quant_state
    logits = model.apply(variables, tasks.model_inputs(batch, task), train=True,
                         rngs={"dropout": dropout_rng})
    return tasks.loss_and_metrics(logits, batch, task)

  extra = state.extra
  if quant_state is None:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, None)
  else:
    (_, metrics), (grads, probes) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params, quant_state)
    extra = {**extra, quant.QUANT_STATE: quant.fp8.next_delayed_states(quant_state, probes)}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)
  if with_stats:
    metrics.update(stats.per_layer_rms(state.params, "rms_params"))
    metrics.update(stats.per_layer_rms(grads, "rms_grads"))
    metrics.update(stats.per_layer_rms(updates, "rms_updates"))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
  return _constrain(new_state, state_sharding), metrics


@functools.partial(jax.jit, static_argnames=("model", "task"))
def eval_step(params: Any, batch: dict, *, model: nn.Module, task: str,
              quant_state: Any = None) -> dict:
  """Masked sums of loss / correct / count over one eval batch (quant_state: the fp8
  delayed-scaling histories, read but not updated)."""
  variables = {"params": params}
  if quant_state is not None:
    variables[quant.QUANT_STATE] = quant_state
  logits = model.apply(variables, tasks.model_inputs(batch, task), train=False)
  return tasks.eval_sums(logits, batch, task)


@functools.partial(jax.jit, static_argnames=("model", "task"))
def depth_metrics_step(params: Any, batch: dict, *, model: nn.Module, task: str) -> dict:
  """jaxlab.analysis.depth_diagnostics.depth_metrics on one batch (a model with residual blocks
  named block_<i>): residual-stream variance after each block and its last/first ratio, angular
  distance between consecutive blocks' inputs, per-block gradient norms (max/min, CV) and the
  loss increase when each block is removed."""
  inputs = tasks.model_inputs(batch, task)

  def loss_fn(logits, b):
    return tasks.loss_and_metrics(logits, b, task)[0]

  grads = jax.grad(lambda p: loss_fn(model.apply({"params": p}, inputs, train=False), batch))(
      params)
  return depth_diagnostics.depth_metrics(model, params, inputs, grads=grads, batch=batch,
                                         loss_fn=loss_fn)


def sum_trees(a: dict | None, b: dict) -> dict:
  return b if a is None else jax.tree.map(jnp.add, a, b)
