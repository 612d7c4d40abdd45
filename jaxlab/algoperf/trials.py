"""Tuning trials of one submission on one workload: trained for the workload's budget with the
validation metric evaluated every `eval_every` steps (AlgoPerf's protocol, Dahl et al. 2023).

K trials run vmapped in one program (their searched hyperparameters and init seeds are the
vmapped axis: learning rate, betas, weight decay, warmup all enter as traced scalars), with
that axis split over the local devices where their number divides K (on a CPU split into one
device per core, jaxlab.sharding.host_devices, each core trains its share), or one after the
other. Conv nets on CPU run one after the other in jitted chunks of 5 unrolled steps:
XLA:CPU runs scanned conv gradients ~10x slower (jaxlab.train.step_loops).
"""

import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.algoperf.submission import Submission, stack_hparams
from jaxlab.algoperf.workloads import WorkloadData, validation_metric
from jaxlab.train import core, step_loops


def _programs(wd: WorkloadData, submission: Submission, num_steps: int, unroll: bool):
  """(init, advance, evaluate), each jitted and vmapped over the trials' axis."""
  model, task, metric = wd.model, wd.task, wd.workload.metric

  def init(hp, seed):
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), wd.example)
    return params, submission.make(hp, num_steps).init(params), extra

  def advance(hp, carry, batches):
    step = step_loops.optimizer_step(model, submission.make(hp, num_steps), task)
    return jax.lax.scan(step, carry, batches, unroll=unroll)

  def evaluate(carry, batch):
    params, opt_state, extra = carry
    logits = core.logits(model, submission.eval_params(params, opt_state), extra, batch, task)
    return validation_metric(metric, task.eval_sums(logits, batch))

  return (jax.jit(jax.vmap(init)),
          jax.jit(jax.vmap(advance, in_axes=(0, 0, None)), donate_argnums=1),
          jax.jit(jax.vmap(evaluate, in_axes=(0, None))))


def run_trials(wd: WorkloadData, submission: Submission, trials: list[dict], seeds: list[int],
               vmapped: bool | None = None,
               on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
  """One dict per trial: hparams, seed, eval_steps [E], eval_metric [E], train_loss [E] (mean
  over each interval), seconds [E] (cumulative training wall-clock at each evaluation,
  compilation included, evaluation excluded; a vmapped group's time split evenly over its
  trials), vmapped. vmapped=None: vmapped unless the model convolves on CPU. on_result(k,
  result) is called as soon as trial k is done (one by one: after each trial), so a caller can
  save it before the next one starts."""
  if len(trials) != len(seeds):
    raise ValueError(f"{len(trials)} trials but {len(seeds)} seeds")
  conv_chunk = step_loops.chunk_for(wd.convolves)  # > 0: conv net on CPU
  if vmapped is None:
    vmapped = not conv_chunk
  groups = [list(range(len(trials)))] if vmapped else [[k] for k in range(len(trials))]
  num_steps = len(jax.tree.leaves(wd.train_batches)[0])
  every = min(wd.workload.eval_every, num_steps)
  # compiled once for every group
  programs = _programs(wd, submission, num_steps, unroll=conv_chunk > 0)
  out: list[dict] = [{} for _ in trials]
  for group in groups:
    for k, result in zip(group, _run_group(wd, programs, num_steps, every, conv_chunk or every,
                                           [trials[k] for k in group],
                                           [seeds[k] for k in group])):
      out[k] = {**result, "vmapped": vmapped}
      if on_result is not None:
        on_result(k, out[k])
  return out


def _run_group(wd: WorkloadData, programs: tuple, num_steps: int, every: int, chunk: int,
               trials: list[dict], seeds: list[int]) -> list[dict]:
  """Trains the group from init, `chunk` steps per call, evaluating every `every` steps."""
  batches = wd.train_batches
  init, advance, evaluate = programs
  hp, seeds = _split_over_devices(stack_hparams(trials), np.asarray(seeds, np.uint32))
  t = time.perf_counter()
  carry = init(hp, seeds)
  jax.block_until_ready(carry)
  train_s = time.perf_counter() - t
  steps, metric, loss, seconds = [], [], [], []
  for start in range(0, num_steps, every):
    stop = min(start + every, num_steps)
    losses = []
    t = time.perf_counter()
    for s in range(start, stop, chunk):
      carry, part = advance(hp, carry, jax.tree.map(lambda x, s=s: x[s:min(s + chunk, stop)],
                                                    batches))
      losses.append(part)
    jax.block_until_ready(losses)
    train_s += time.perf_counter() - t
    steps.append(stop)
    seconds.append(train_s / len(trials))
    loss.append(np.concatenate([np.asarray(p) for p in losses], axis=1).mean(axis=1))
    metric.append(np.asarray(evaluate(carry, wd.eval_batch)))
  metric, loss = np.stack(metric, axis=1), np.stack(loss, axis=1)
  return [{"hparams": {k: float(v) for k, v in trial.items()}, "seed": int(seed),
           "eval_steps": steps, "eval_metric": _floats(metric[i]), "train_loss": _floats(loss[i]),
           "seconds": list(seconds)} for i, (trial, seed) in enumerate(zip(trials, seeds))]


def _split_over_devices(hp: dict, seeds: np.ndarray) -> tuple[dict, jax.Array]:
  """hp and seeds laid out along the trials' axis over the local devices when their count
  divides it (the programs then run sharded, the batches replicated); as they are otherwise."""
  devices = jax.local_devices()
  if len(devices) == 1 or len(seeds) % len(devices):
    return hp, seeds
  by_trial = NamedSharding(Mesh(np.array(devices), ("trial",)), P("trial"))
  return jax.device_put(hp, by_trial), jax.device_put(seeds, by_trial)


def _floats(values: Any) -> list[float]:
  return [float(v) for v in np.asarray(values)]
