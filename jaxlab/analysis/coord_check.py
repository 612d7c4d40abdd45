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

from jaxlab.param.meta import unbox
from jaxlab.train import tasks


def activation_scales(model: nn.Module, params, inputs: jax.Array) -> dict[str, jax.Array]:
  """{module path: mean |output|} for every submodule (and the model's output, key 'logits')."""
  logits, state = model.apply({"params": params}, inputs, capture_intermediates=True,
                              mutable=["intermediates"])
  out = {"logits": jnp.mean(jnp.abs(logits))}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-2:-1] != ["__call__"] or not keys[:-2]:
      continue  # only module outputs of nested modules (the root's output is 'logits')
    out["/".join(keys[:-2])] = jnp.mean(jnp.abs(leaf))
  return out


def coord_check(build: Callable[[int], tuple[nn.Module, optax.GradientTransformation]],
                widths, batch: dict, task: str, steps: int, seed: int = 0) -> dict:
  """{width: [activation_scales before update t for t = 0..steps]} training on one fixed batch.

  `build(width)` gives the model and its full optax chain (e.g. with scale_by_parametrization).
  """
  results = {}
  inputs = tasks.model_inputs(batch, task)
  for width in widths:
    model, tx = build(width)
    params = unbox(model.init(jax.random.PRNGKey(seed), inputs)["params"])

    @jax.jit
    def step(params, opt_state):
      def loss_fn(p):
        return tasks.loss_and_metrics(model.apply({"params": p}, inputs), batch, task)[0]
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    opt_state, history = tx.init(params), []
    for _ in range(steps + 1):
      history.append({k: float(v) for k, v in activation_scales(model, params, inputs).items()})
      params, opt_state = step(params, opt_state)
    results[width] = history
  return results
