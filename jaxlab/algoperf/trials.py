"""Tuning trials of one submission on one workload: trained for the workload's budget with the
validation metric evaluated every `eval_every` steps (AlgoPerf's protocol, Dahl et al. 2023).

K trials run vmapped in one program (their searched hyperparameters and init seeds are the
vmapped axis: learning rate, betas, weight decay, warmup all enter as traced scalars), with
that axis split over the local devices where their number divides K (on a CPU split into one
device per core, jaxlab.sharding.host_devices, each core trains its share), or as programs
of their own, one trial per local device at a time. Conv nets on CPU take the latter, in jitted
chunks of 5 unrolled steps: XLA:CPU runs scanned conv gradients ~10x slower
(jaxlab.train.step_loops), and a vmapped pair of ResNet trials 2x slower than the two one
after the other.
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
  compilation included, evaluation excluded; a group's time split evenly over its trials),
  vmapped. vmapped=None: vmapped unless the model convolves on CPU. Not vmapped, the trials run
  one per local device at a time (the same program on each, its calls dispatched to all of them
  before any is waited on), so every core trains a trial of its own. on_result(k, result) is
  called as soon as trial k is done, so a caller can save it before the next one starts."""
  if len(trials) != len(seeds):
    raise ValueError(f"{len(trials)} trials but {len(seeds)} seeds")
  conv_chunk = step_loops.chunk_for(wd.convolves)  # > 0: conv net on CPU
  if vmapped is None:
    vmapped = not conv_chunk
  num_steps = len(jax.tree.leaves(wd.train_batches)[0])
  every = min(wd.workload.eval_every, num_steps)
  # compiled once for every group (and once per device the trials run on)
  programs = _programs(wd, submission, num_steps, unroll=conv_chunk > 0)
  devices = jax.local_devices()
  ks = list(range(len(trials)))
  groups = [ks] if vmapped else [ks[i:i + len(devices)] for i in range(0, len(ks), len(devices))]
  out: list[dict] = [{} for _ in trials]
  for group in groups:
    if vmapped:
      lanes = [_split_over_devices(stack_hparams(trials), np.asarray(seeds, np.uint32))]
    else:  # trial group[i] on devices[i]
      lanes = [jax.device_put((stack_hparams([trials[k]]), np.asarray([seeds[k]], np.uint32)),
                              device) for k, device in zip(group, devices)]
    results = _run_group(wd, programs, num_steps, every, conv_chunk or every, lanes)
    for k, result in zip(group, results):
      out[k] = {"hparams": {n: float(v) for n, v in trials[k].items()}, "seed": int(seeds[k]),
                **result, "vmapped": vmapped}
      if on_result is not None:
        on_result(k, out[k])
  return out


def _run_group(wd: WorkloadData, programs: tuple, num_steps: int, every: int, chunk: int,
               lanes: list[tuple[dict, jax.Array]]) -> list[dict]:
  """Trains each lane's vmapped trials (hparams, seeds) from init, `chunk` steps per call,
  evaluating every `every` steps; each call is dispatched to every lane before any is waited
  on, so lanes on different devices train at the same time. One dict per trial, lanes in
  order."""
  batches = wd.train_batches
  init, advance, evaluate = programs
  t = time.perf_counter()
  carries = [init(hp, seeds) for hp, seeds in lanes]
  jax.block_until_ready(carries)
  train_s = time.perf_counter() - t
  num_trials = sum(len(seeds) for _, seeds in lanes)
  steps, seconds = [], []
  metric, loss = [[] for _ in lanes], [[] for _ in lanes]
  for start in range(0, num_steps, every):
    stop = min(start + every, num_steps)
    losses = [[] for _ in lanes]
    t = time.perf_counter()
    for s in range(start, stop, chunk):
      part = jax.tree.map(lambda x, s=s: x[s:min(s + chunk, stop)], batches)
      for i, (hp, _) in enumerate(lanes):
        carries[i], lane_loss = advance(hp, carries[i], part)
        losses[i].append(lane_loss)
    jax.block_until_ready(losses)
    train_s += time.perf_counter() - t
    steps.append(stop)
    seconds.append(train_s / num_trials)
    evals = [evaluate(carry, wd.eval_batch) for carry in carries]
    for i, lane_metric in enumerate(evals):
      loss[i].append(np.concatenate([np.asarray(p) for p in losses[i]], axis=1).mean(axis=1))
      metric[i].append(np.asarray(lane_metric))
  metric = np.concatenate([np.stack(m, axis=1) for m in metric])
  loss = np.concatenate([np.stack(v, axis=1) for v in loss])
  return [{"eval_steps": steps, "eval_metric": _floats(m), "train_loss": _floats(v),
           "seconds": list(seconds)} for m, v in zip(metric, loss)]


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
