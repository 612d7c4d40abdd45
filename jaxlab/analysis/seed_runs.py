"""Several seeds of one config trained in one vmapped program, and whole-split evaluation of a
params tree: what the weight-space studies (experiments.weight_space, pruning_study) build on."""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.train import core, step as step_lib, tasks


def train_seeds(model: nn.Module, tx: optax.GradientTransformation, task: tasks.Task,
                seeds: Sequence[int], batches: dict, init: Any = None) -> Any:
  """Final params [S, ...] of one run per seed: init from the seed (or every run from the params
  `init`: fine-tuning), then a lax.scan of optimizer steps over batches [S, T, ...] (seed s's own
  data order), vmapped over the seeds."""

  def one(seed, seed_batches):
    example = task.inputs(jax.tree.map(lambda x: x[0], seed_batches))
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), example)
    if init is not None:
      params = jax.tree.map(jnp.asarray, init)

    def step(carry, batch):
      p, opt_state = carry
      _, _, grads, _ = core.loss_and_grads(model, p, extra, batch, task)
      p, opt_state, _ = core.apply_update(tx, p, opt_state, grads)
      return (p, opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), seed_batches)
    return params

  return jax.jit(jax.vmap(one))(jnp.asarray(seeds, jnp.uint32), batches)


def evaluator(model: nn.Module, task: tasks.Task,
              eval_batches: Sequence[dict]) -> Callable[[Any], dict[str, float]]:
  """variables ({'params': ...}) -> {'loss', 'accuracy'} over the given (masked) eval batches,
  e.g. a whole test split from jaxlab.data.eval_batches."""
  step = jax.jit(lambda p, b: step_lib.eval_step(p, {}, b, model=model, task=task))

  def evaluate(variables):
    sums = None
    for b in eval_batches:
      sums = step_lib.sum_trees(sums, step(variables["params"], b))
    return tasks.finish_eval(jax.device_get(sums))

  return evaluate
