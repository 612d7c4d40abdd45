"""A learning-rate sweep that picks how to run its K runs: all K vmapped in one program, or one
after the other, by timing both on the sweep's own first steps.

Vmapping turns each matmul into a batched matmul. On XLA:CPU a batched matmul runs well below
the speed of the same FLOPs as separate GEMMs once the matrices are large (the 2-layer MLP at
width 512: the vmapped sweep of 12 LRs was 0.89x of running them one by one, Intel Xeon,
2026-12), while at small widths vmapping wins by amortising the per-step overhead. So the runs
advance `steps_per_call` steps per jitted call; with schedule='auto' the second call of the
vmapped program and two calls of the one-LR program (on a copy of LR 0's state) are timed, and
the rest of the sweep continues from the vmapped state with whichever is faster per LR-step.
No step is recomputed except the one-LR probe's.
"""

import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.train import core, step_loops
from jaxlab.train.tasks import Task, as_task

SCHEDULES = ("auto", "vmap", "loop")


class Stepper(NamedTuple):
  """Jitted pieces of K x S runs (state: params, optimizer state, extra; leading axes [K, S])."""
  init: Callable[[jax.Array, jax.Array, jax.Array], Any]  # (lrs, seeds, example) -> state
  advance: Callable[[jax.Array, Any, dict], tuple[Any, jax.Array]]  # -> state, losses [K, S, U]
  finish: Callable[[Any, dict], jax.Array]  # (state, eval_batch) -> eval loss [K, S]


def make_stepper(model: nn.Module, tx_fn: Callable[[jax.Array], optax.GradientTransformation],
                 task: Task | str) -> Stepper:
  """The runs of lr_sweep.make_sweep split into init / advance U steps / final eval."""
  task = as_task(task)

  def init_one(lr, seed, example):
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), example)
    return params, tx_fn(lr).init(params), extra

  def advance_one(lr, state, batches):
    return step_loops.scan_steps(step_loops.optimizer_step(model, tx_fn(lr), task), state,
                                 batches)

  def finish_one(state, eval_batch):
    params, _, extra = state
    return core.loss_and_metrics(model, params, extra, eval_batch, task)[0]

  return Stepper(
      init=jax.jit(jax.vmap(jax.vmap(init_one, in_axes=(None, 0, None)), in_axes=(0, None, None))),
      advance=jax.jit(jax.vmap(jax.vmap(advance_one, in_axes=(None, 0, None)),
                               in_axes=(0, 0, None)), donate_argnums=1),
      finish=jax.jit(jax.vmap(jax.vmap(finish_one, in_axes=(0, None)), in_axes=(0, None))))


def run_sweep(stepper: Stepper, lrs: Sequence[float], seeds: Sequence[int], train_batches: dict,
              eval_batch: dict, task: Task | str, schedule: str = "auto",
              steps_per_call: int = 25) -> dict:
  """{'train_loss' [K, S, T], 'eval_loss' [K, S], 'schedule' (the one used), 'probe' (auto:
  seconds per LR-step of each)}."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}: valid: {', '.join(SCHEDULES)}")
  lrs = jnp.asarray(lrs, jnp.float32)
  steps = len(jax.tree.leaves(train_batches)[0])
  calls = [jax.tree.map(lambda x, s=s: x[s:s + steps_per_call], train_batches)
           for s in range(0, steps, steps_per_call)]
  example = as_task(task).inputs(jax.tree.map(lambda x: x[0], train_batches))
  state = stepper.init(lrs, jnp.asarray(seeds, jnp.uint32), example)
  losses, probe, done = [], {}, 0
  if schedule in ("auto", "vmap"):
    first = 2 if schedule == "auto" and len(calls) >= 3 else len(calls)
    for i in range(first):
      t = time.perf_counter()
      state, loss = stepper.advance(lrs, state, calls[i])
      losses.append(jax.block_until_ready(loss))
      probe["vmap"] = (time.perf_counter() - t) / (len(lrs) * steps_per_call)
    done = first
    if done < len(calls):
      probe["loop"] = _time_one_lr(stepper, lrs, state, calls[done])
      schedule = "vmap" if probe["vmap"] <= probe["loop"] else "loop"
  if schedule == "vmap":
    for batches in calls[done:]:
      state, loss = stepper.advance(lrs, state, batches)
      losses.append(loss)
  else:
    lanes = []
    for k in range(len(lrs)):
      lane = jax.tree.map(lambda x, k=k: x[k:k + 1], state)
      lane_losses = []
      for batches in calls[done:]:
        lane, loss = stepper.advance(lrs[k:k + 1], lane, batches)
        lane_losses.append(loss)
      lanes.append((lane, lane_losses))
    state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[lane for lane, _ in lanes])
    if done < len(calls):
      losses.append(jnp.concatenate([jnp.concatenate(l, axis=2) for _, l in lanes]))
  return {"train_loss": np.asarray(jnp.concatenate(losses, axis=2)),
          "eval_loss": np.asarray(stepper.finish(state, eval_batch)),
          "schedule": schedule, "probe": probe}


def _time_one_lr(stepper: Stepper, lrs: jax.Array, state: Any, batches: dict) -> float:
  """Seconds per step of the one-LR program (second call; on a copy of LR 0's state)."""
  lane = jax.tree.map(lambda x: jnp.array(x[:1]), state)
  for _ in range(2):
    t = time.perf_counter()
    lane, loss = stepper.advance(lrs[:1], lane, batches)
    jax.block_until_ready(loss)
  return (time.perf_counter() - t) / len(jax.tree.leaves(batches)[0])
