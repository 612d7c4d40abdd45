"""Coordinate check (Yang et al. 2022, Tensor Programs V, Sec. 7 / microsoft/mup's coord_check):
the mean |x| of every layer's output over a few training steps, at several widths.

Under a parametrization with feature learning and stable logits (muP) the curves are flat in
width; under SP the logits (and, with Adam, the hidden layers) grow with width.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab import quant
from jaxlab.train import core
from jaxlab.train.tasks import Task, as_task


def activation_scales(model: nn.Module, params, inputs: jax.Array,
                      extra: dict | None = None) -> dict[str, jax.Array]:
  """{module path: mean |output|} for every submodule (and the model's output, key 'logits');
  `extra` (TrainState.extra) carries the quantization state of a stateful policy."""
  logits, state = model.apply(quant.model_variables(params, extra), inputs,
                              capture_intermediates=True, mutable=["intermediates"])
  out = {"logits": jnp.mean(jnp.abs(logits))}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-2:-1] != ["__call__"] or not keys[:-2]:
      continue  # only module outputs of nested modules (the root's output is 'logits')
    out["/".join(keys[:-2])] = jnp.mean(jnp.abs(leaf))
  return out


def coord_check(build: Callable[[int], tuple[nn.Module, optax.GradientTransformation]],
                widths, batch: dict, task: Task | str, steps: int, seed: int = 0) -> dict:
  """{width: [activation_scales before update t for t = 0..steps]} training on one fixed batch
  (jaxlab.train.core; a stateful quantization policy's state advances with the steps and is
  read by the forward passes).

  `build(width)` gives the model and its full optax chain (e.g. with scale_by_parametrization);
  `task`: a jaxlab.train.tasks.Task or its name.
  """
  task = as_task(task)
  results = {}
  inputs = task.inputs(batch)
  for width in widths:
    model, tx = build(width)
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), inputs)

    @jax.jit
    def step(params, opt_state, extra):
      _, _, grads, extra = core.loss_and_grads(model, params, extra, batch, task)
      params, opt_state, _ = core.apply_update(tx, params, opt_state, grads)
      return params, opt_state, extra

    opt_state, history = tx.init(params), []
    for _ in range(steps + 1):
      scales = activation_scales(model, params, inputs, extra)
      history.append({k: float(v) for k, v in scales.items()})
      params, opt_state, extra = step(params, opt_state, extra)
    results[width] = history
  return results
