"""The one loss / gradient / update core of every training path: the train step, the depth
metrics step (jaxlab.train.step), the vmapped LR sweep, the coordinate check
(jaxlab.analysis) and the depth study.

`extra` is TrainState.extra. With a stateful quantization policy it holds the quantization
state (extra['quant_state'], e.g. fp8 delayed-scaling amax histories): the forward pass reads it
and `loss_and_grads` also differentiates the loss with respect to it and asks the model's policy
for the next state (`QuantPolicy.next_state`: each format advances its own state; fp8 delayed
scaling reads this step's amaxes from the cotangents of its zero probes). Without one,
extra is {} and passes through unchanged. All functions are pure and traceable.
"""

from typing import Any

import flax.linen as nn
import jax
import optax

from jaxlab import quant
from jaxlab.param.meta import unbox
from jaxlab.train.tasks import Task


def logits(model: nn.Module, params: Any, extra: dict, batch: dict, task: Task) -> jax.Array:
  """The model's output on task.inputs(batch), reading the quantization state in `extra` (if
  any)."""
  return model.apply(quant.model_variables(params, extra), task.inputs(batch))


def loss_and_metrics(model: nn.Module, params: Any, extra: dict, batch: dict,
                     task: Task) -> tuple[jax.Array, dict]:
  """(mean loss, task metrics) of `model` on `batch` (Task.loss_and_metrics of `logits`)."""
  return task.loss_and_metrics(logits(model, params, extra, batch, task), batch)


def loss_and_grads(model: nn.Module, params: Any, extra: dict, batch: dict,
                   task: Task) -> tuple[jax.Array, dict, Any, dict]:
  """(mean loss, task metrics, d loss / d params, new extra) of `model` on `batch`; the new
  extra carries the advanced quantization state (the old one is only read)."""
  quant_state = extra.get(quant.QUANT_STATE)

  def loss_fn(params, quant_state):
    extra_in = extra if quant_state is None else {**extra, quant.QUANT_STATE: quant_state}
    return loss_and_metrics(model, params, extra_in, batch, task)

  if quant_state is None:
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, None)
    return loss, metrics, grads, extra
  (loss, metrics), (grads, probes) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, quant_state)
  return loss, metrics, grads, {
      **extra, quant.QUANT_STATE: model.ctx.quant.next_state(quant_state, probes)}


def apply_update(tx: optax.GradientTransformation, params: Any, opt_state: Any,
                 grads: Any) -> tuple[Any, Any, Any]:
  """(new params, new optimizer state, updates): one step of the optax chain `tx`."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, updates


def init_params_and_extra(model: nn.Module, rng: jax.Array,
                          inputs: jax.Array) -> tuple[Any, dict]:
  """(params, extra) of a fresh model: the unboxed params, and the quantization state (if its
  policy has one) as extra['quant_state']."""
  variables = model.init(rng, inputs)
  extra = {quant.QUANT_STATE: variables[quant.QUANT_STATE]} if (
      quant.QUANT_STATE in variables) else {}
  return unbox(variables["params"]), extra
