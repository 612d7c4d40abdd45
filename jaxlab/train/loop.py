"""The train loop: data -> jitted step -> metrics.jsonl / eval / orbax checkpoints.

One readable loop (big_vision habit). Fault tolerance: checkpoints hold the train state and the
data-iterator state, so rerunning the same command resumes bit-exactly from the latest one;
SIGINT (Ctrl-C) and SIGTERM save and return (during start-up: raise Interrupted); a non-finite
loss, gradient or parameter norm, or a loss that stays far above its running minimum
(config.divergence), stops the run before any checkpoint of a bad state can be written.
"""

import json
import math
import os
import re
import signal
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from jaxlab import data, optim, sharding
from jaxlab import param as param_lib
from jaxlab.depth.rescaling import BLOCK_PATTERN
from jaxlab.errors import UserError
from jaxlab.train import checkpoint, step as step_lib, tasks
from jaxlab.train.init import (build_model, dummy_input, init_inputs, init_state, make_tx,
                               param_info_of)
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.metrics import MetricsWriter, read_metrics

SYNC_EVERY = 10  # wait for the device at least this often (8 simulated CPU devices need it)


class DivergenceError(FloatingPointError):
  """The run diverged and stopped before checkpointing the bad state (experiments.train: exit 1)."""


class NonFiniteLossError(DivergenceError):
  """A non-finite train loss, gradient norm or parameter norm."""


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM during start-up (before the train loop): nothing new was saved."""

  def __init__(self, signal_name: str):
    super().__init__(f"stopped by {signal_name} during start-up")
    self.signal_name = signal_name


class _StopFlag:
  """SIGINT (Ctrl-C) and SIGTERM handlers for one run.

  Until arm() (start-up: data, model, init, restore) a signal raises Interrupted; once the loop
  is about to start it only records the signal, and the loop saves a checkpoint after the
  current step and returns (result["preempted"], result["signal"]).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signal_name: str | None = None
    self._armed = False
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def arm(self) -> None:
    self._armed = True

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if not self._armed:
      raise Interrupted(name)
    if self.signal_name is None:
      logging.warning("%s received: saving a checkpoint and stopping after this step", name)
      self.signal_name = name
    else:
      logging.warning("%s received: already stopping after this step", name)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


class _DivergenceGuard:
  """config.divergence: stops the run when the logged train loss stays above factor x its
  running minimum (the loss at step 1, before any update, counts) for `patience` consecutive
  logs. While the loss is above, periodic checkpoints wait (so the newest one stays good)."""

  def __init__(self, config: ml_collections.ConfigDict):
    cfg = config.get("divergence") or {}
    self.factor = float(cfg.get("factor", 0.0))
    self.patience = int(cfg.get("patience", 3))
    self.running_min = math.inf
    self.streak: list[int] = []  # the steps of the consecutive logs above the threshold

  @property
  def above(self) -> bool:
    return bool(self.streak)

  def update(self, step: int, loss: float, first_loss: float | None = None) -> bool:
    """Adds one logged train loss (first_loss: the step-1 loss); True once the run diverged."""
    if not self.factor:
      return False
    if first_loss is not None:
      self.running_min = min(self.running_min, first_loss)
    self.streak = self.streak + [step] if loss > self.factor * self.running_min else []
    self.running_min = min(self.running_min, loss)
    return len(self.streak) >= self.patience

  def replay(self, workdir: str, upto: int) -> None:
    """Resumes the guard's state from the train losses metrics.jsonl logged up to step `upto`."""
    try:
      rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    except (OSError, ValueError):  # no or unreadable metrics: the guard starts afresh
      return
    for r in rows:
      if isinstance(r.get("train/loss"), float) and r.get("step", upto + 1) <= upto:
        self.update(r["step"], r["train/loss"])

  def error(self, step: int, loss: float, last_ckpt: int | None, workdir: str) -> DivergenceError:
    return DivergenceError(
        f"train loss {loss:.4g} at step {step} stayed above {self.factor:g} x its running minimum"
        f" {self.running_min:.4g} for {self.patience} consecutive logs (steps {self.streak[0]}"
        f"-{step}); stopping. {_last_good(last_ckpt, workdir)}. Lower"
        " config.optim.learning_rate, or set config.divergence.factor=0 to disable this check.")


def _last_good(last_ckpt: int | None, workdir: str) -> str:
  return (f"The last good checkpoint is step {last_ckpt} in {workdir}/checkpoints"
          if last_ckpt is not None else "No checkpoint was written yet")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """UserError (one line naming the config key) for values the loop cannot run with."""
  for key in ("num_steps", "log_every", "checkpoint_every", "batch_size", "eval_batch_size"):
    if int(config[key]) < 1:
      raise UserError(f"config.{key}={config[key]} must be a positive integer")
  for key in ("eval_every", "stats_every", "eval_max_batches", "depth_metrics_every"):
    if int(config[key]) < 0:
      raise UserError(f"config.{key}={config[key]} must be >= 0 (0 disables it)")
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % num_devices:
      raise UserError(f"config.{key}={config[key]} must be divisible by the {num_devices} devices"
                      " of the mesh's batch axes (config.mesh.data x config.mesh.fsdp; each gets"
                      " an equal slice of the batch, config.mesh.model shares it)")
  div = config.get("divergence") or {}
  factor, patience = float(div.get("factor", 0.0)), div.get("patience", 3)
  if not (factor == 0 or (math.isfinite(factor) and factor > 1)):
    raise UserError(f"config.divergence.factor={factor} must be 0 (off) or a finite number > 1")
  if not (isinstance(patience, int) and patience >= 1):
    raise UserError(f"config.divergence.patience={patience} must be a positive integer")
  param_lib.get(**config.param)  # an unknown name or option stops us before data
  warmup, num_steps = int(config.optim.get("warmup_steps", 0)), int(config.num_steps)
  if not 0 <= warmup <= num_steps:
    raise UserError(f"config.optim.warmup_steps={warmup} must lie in [0, config.num_steps="
                    f"{num_steps}]: lower it (e.g. --config.optim.warmup_steps={num_steps // 10})"
                    " or raise config.num_steps")
  optim.make_schedule(config.optim, config.num_steps)  # a bad learning rate stops us before data


def evaluate(state, config, model, task, mesh) -> dict[str, float]:
  max_batches = config.get("eval_max_batches", 0) or None
  sums = None
  for batch in data.eval_batches(config.data, batch_size=config.eval_batch_size,
                                 max_batches=max_batches):
    batch = sharding.shard_batch(batch, mesh)
    sums = step_lib.sum_trees(sums, step_lib.eval_step(
        state.params, state.extra, batch, model=model, task=task))
  return tasks.finish_eval(jax.device_get(sums))


def depth_metrics(state, config, model, task, mesh) -> dict[str, float]:
  """Depth diagnostics (step.depth_metrics_step) on the first eval batch."""
  batch = next(data.eval_batches(config.data, batch_size=config.eval_batch_size, max_batches=1))
  batch = sharding.shard_batch(batch, mesh)
  out = step_lib.depth_metrics_step(state.params, state.extra, batch, model=model, task=task)
  return {k: float(v) for k, v in jax.device_get(out).items()}


def _depth_metrics_every(config, state) -> int:
  """config.depth_metrics_every, checked against the model."""
  every = config.get("depth_metrics_every", 0)
  if every and not any(re.fullmatch(BLOCK_PATTERN, name) for name in state.params):
    raise UserError(f"config.depth_metrics_every={every} needs a model with residual blocks "
                    f"named block_<i> (transformer, vit); config.model.name="
                    f"{config.model.name!r} has {sorted(state.params)}. Set it to 0.")
  return every


class StepBar(tqdm.tqdm):
  """The progress bar; its timer (rate, ETA, elapsed) starts once the first step has compiled.

  The bar shows from the start, but the first `update` (the first step done, compile included)
  restarts the timer first, so the compile time never enters the rate or the ETA.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._timer_started = False

  def update(self, n=1):
    if not self._timer_started:
      self._timer_started = True
      self.unpause()  # no print since the bar was made: the timer now starts here
    return super().update(n)


def _mean_train_metrics(pending: list[tuple[int, dict]]) -> dict[str, float]:
  fetched = jax.device_get([m for _, m in pending])
  scalars = [k for k in fetched[0] if not k.startswith("rms_")]
  return {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in scalars}


def _check_finite(pending: list[tuple[int, dict]], last_ckpt: int | None, workdir: str) -> None:
  for step, m in pending:
    loss, gnorm, pnorm = jax.device_get((m["loss"], m["grad_norm"], m["param_norm"]))
    if not (np.isfinite(loss) and np.isfinite(gnorm) and np.isfinite(pnorm)):
      raise NonFiniteLossError(
          f"non-finite training loss ({loss}), gradient norm ({gnorm}) or parameter norm ({pnorm})"
          f" at step {step}; stopping. {_last_good(last_ckpt, workdir)}. Lower"
          " config.optim.learning_rate or enable config.optim.grad_clip.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: Sequence[str] = ()) -> dict[str, Any]:
  """Trains config from scratch or from the latest checkpoint in workdir; returns final metrics.

  The workdir is locked for the run (workdir_lib.WorkdirLock, process 0). A resume whose config
  changes how the checkpoints were trained raises workdir_lib.WorkdirError unless the changed
  keys are in allow_config_change (see jaxlab/train/workdir.py for which keys may change).
  """
  os.makedirs(workdir, exist_ok=True)
  with _StopFlag() as stop:  # SIGINT / SIGTERM: Interrupted during start-up, then save and stop
    if jax.process_index() != 0:
      return _train_and_evaluate(config, workdir, allow_config_change, stop)
    with workdir_lib.WorkdirLock(workdir):
      return _train_and_evaluate(config, workdir, allow_config_change, stop)


def _train_and_evaluate(config, workdir, allow_config_change, stop) -> dict[str, Any]:
  is_chief = jax.process_index() == 0
  new_config = workdir_lib.config_dict(config)
  latest = max(workdir_lib.checkpoint_steps(workdir), default=0)
  changes = {}
  if latest:  # checked before anything is built or restored: a shape change cannot restore
    changes = workdir_lib.check_resume(workdir, new_config, latest, allow_config_change)
  mesh = sharding.make_mesh(config.mesh)
  validate_config(config, sharding.batch_shards(mesh))
  spec = data.dataset_spec(config.data)
  model = build_model(config, spec)
  example = dummy_input(spec, config.data.get("seq_len", 0))
  tx = make_tx(config, model, param_info_of(model, example))
  task = tasks.get(config.data.task)
  train_iter = data.make_train_iterator(config.data, batch_size=config.batch_size, seed=config.seed)
  state, state_shardings = init_state(
      model, tx, init_inputs(model, example, train_iter, task, mesh), config.seed, mesh)
  state_sharding = step_lib.Static(state_shardings)
  depth_every = _depth_metrics_every(config, state)

  manager = checkpoint.make_manager(workdir, max_to_keep=config.max_to_keep)
  restored = checkpoint.restore_latest(manager, state)
  last_ckpt = None
  if restored is not None:
    state, data_state = restored
    train_iter.set_state(data_state)
    last_ckpt = int(state.step)
    logging.info("resumed from checkpoint at step %d", last_ckpt)
  start = int(state.step)
  if start and start != latest:  # restored an older checkpoint: compare with its config
    changes = workdir_lib.check_resume(workdir, new_config, start, allow_config_change)
  stop.arm()  # from here on a signal stops the loop after its current step, with a checkpoint
  writer = MetricsWriter(workdir, resume_step=start, enabled=is_chief)
  if is_chief:  # every check passed: the config goes on the record
    workdir_lib.record_config(workdir, config.to_json(indent=2), start, changes if start else {})
    workdir_lib.record_parametrization(workdir, param_lib.describe(model.ctx.parametrization))

  def save():
    nonlocal last_ckpt
    last_ckpt = checkpoint.save(manager, state, train_iter.get_state())

  guard = _DivergenceGuard(config)
  guard.replay(workdir, start)
  pending: list[tuple[int, dict]] = []
  result: dict[str, Any] = {"preempted": False}
  bar = StepBar(total=config.num_steps, initial=start, disable=not is_chief, unit="step",
                dynamic_ncols=True, mininterval=1.0 if os.isatty(2) else 30.0)
  t0 = time.time()
  for step in range(start + 1, config.num_steps + 1):
    if stop.requested:  # the signal came before the first step: nothing new to save
      result.update(preempted=True, signal=stop.signal_name)
      break
    batch = sharding.shard_batch(next(train_iter), mesh)
    with_stats = bool(config.stats_every) and step % config.stats_every == 0
    state, metrics = step_lib.train_step(state, batch, model=model, tx=tx, task=task,
                                         with_stats=with_stats, state_sharding=state_sharding)
    pending.append((step, metrics))
    if step == start + 1:  # the first step compiles: time the steady state from its end
      jax.block_until_ready(metrics["loss"])
      t_first = time.time()
    bar.update(1)
    last = step == config.num_steps
    row: dict[str, Any] = {}
    if step % config.log_every == 0 or with_stats or last or stop.requested \
        or step % config.checkpoint_every == 0:
      _check_finite(pending, last_ckpt, workdir)
      first_loss = float(jax.device_get(pending[0][1]["loss"])) if pending[0][0] == 1 else None
      row.update(_mean_train_metrics(pending))
      if guard.update(step, row["train/loss"], first_loss):
        raise guard.error(step, row["train/loss"], last_ckpt, workdir)
      if with_stats:
        row.update({k: v for k, v in jax.device_get(metrics).items() if k.startswith("rms_")})
      pending = []
      bar.set_postfix(loss=f"{row['train/loss']:.4f}", refresh=False)
    elif step % SYNC_EVERY == 0:
      jax.block_until_ready(metrics["loss"])
    if last:  # its metrics were just fetched: the train steps are done
      t_last = time.time()
    if (config.eval_every and step % config.eval_every == 0) or last:
      row.update({f"eval/{k}": v for k, v in evaluate(state, config, model, task, mesh).items()})
    if depth_every and (step % depth_every == 0 or last):
      row.update(depth_metrics(state, config, model, task, mesh))
    if row:
      writer.write(step, row)
      result.update(row)
    if step % config.checkpoint_every == 0 and guard.above and not (last or stop.requested):
      logging.warning("checkpoint at step %d skipped: train loss %.4g is above %g x its running"
                      " minimum %.4g", step, row["train/loss"], guard.factor, guard.running_min)
    elif step % config.checkpoint_every == 0 or last or stop.requested:
      save()
    if stop.requested:
      result.update(preempted=True, signal=stop.signal_name)
      break
  bar.close()
  if start == config.num_steps:
    logging.info("nothing to do: checkpoint at step %d already reached num_steps", start)
  result.update(step=int(state.step), wall_time_s=time.time() - t0)
  if int(state.step) == config.num_steps and config.num_steps - start > 1:
    # seconds per train step after the first (compiling) one; periodic eval and saves included
    result.update(steady_step_s=(t_last - t_first) / (config.num_steps - start - 1))
  manager.close()
  if is_chief:
    logging.info("final: %s", json.dumps({k: v for k, v in result.items() if "rms_" not in k}))
  return result
