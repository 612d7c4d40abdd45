"""Several seeds of one config trained in one vmapped program, and whole-split evaluation of a
params tree: what the weight-space studies (experiments.weight_space, pruning_study) build on."""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.train import core, step as step_lib, step_loops, tasks


def train_seeds(model: nn.Module, tx: optax.GradientTransformation, task: tasks.Task,
                seeds: Sequence[int], batches: dict, init: Any = None, chunk: int = 0) -> Any:
  """Final params [S, ...] of one run per seed: init from the seed (or every run from the params
  `init`: fine-tuning), then one optimizer step per batch of [S, T, ...] (seed s's own data
  order). chunk=0: the seeds vmapped in one lax.scan program; chunk>0: the seeds one after the
  other, `chunk` unrolled steps per jitted call (jaxlab.train.step_loops: much faster for conv
  nets on CPU, where a vmapped convolution also becomes a slow grouped one)."""
  step = step_loops.optimizer_step(model, tx, task)

  def start(seed, seed_batches):
    example = task.inputs(jax.tree.map(lambda x: x[0], seed_batches))
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), example)
    if init is not None:
      params = jax.tree.map(jnp.asarray, init)
    return params, tx.init(params), extra

  def one(seed, seed_batches):
    return step_loops.scan_steps(step, start(seed, seed_batches), seed_batches)[0][0]

  seeds = jnp.asarray(seeds, jnp.uint32)
  if not chunk:
    return jax.jit(jax.vmap(one))(seeds, batches)
  runs, run, jit_start = [], step_loops.chunk_runner(step), jax.jit(start)  # compiled once
  for i, seed in enumerate(seeds):
    seed_batches = jax.tree.map(lambda x, i=i: x[i], batches)
    carry = jit_start(seed, jax.tree.map(lambda x: x[:1], seed_batches))
    runs.append(run(carry, seed_batches, chunk)[0][0])
  return jax.tree.map(lambda *xs: jnp.stack(xs), *runs)


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
