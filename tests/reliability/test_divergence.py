"""Issue 15 item 3, divergence guard: a loss that blows up but stays finite, a parameter norm that
overflows, a non-positive learning rate. Each stops the run naming the step and the last good
checkpoint (exit 1), or is refused at start (exit 2), and no checkpoint of a bad state is left."""

import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlab.train import loop
from jaxlab.train.metrics import read_metrics

DIGITS = "--config=jaxlab/configs/digits_mlp.py"


def digits_args(data_dir, workdir, *extra):
  return [DIGITS, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.model.hidden_widths=(64,64)", "--config.num_steps=200", "--config.log_every=5",
          "--config.eval_every=0", "--config.stats_every=0", "--config.checkpoint_every=10", *extra]


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith(("E1", "E0", "Error", "error"))]


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def digits_config(data_dir, **optim):
  from jaxlab.configs import digits_mlp
  c = digits_mlp.get_config()
  c.data.data_dir = data_dir
  c.model.hidden_widths = (64, 64)
  c.update(num_steps=200, log_every=5, eval_every=0, stats_every=0, checkpoint_every=10)
  c.optim.update(**optim)
  return c


def test_huge_learning_rate_stops_with_one_line_and_exit_1(tfds_data_dir, tmp_path, run_python):
  """The issue's digits_mlp at learning_rate=1e6: rc 0 at 9% accuracy before; now the default
  guard (10 x the running minimum, 3 logs) stops it before any checkpoint is written."""
  workdir = tmp_path / "w"
  out = run_python("-m", "experiments.train",
                   *digits_args(tfds_data_dir, workdir, "--config.optim.learning_rate=1e6"))
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  [line] = error_lines(out.stderr)
  m = re.search(r"train loss (\S+) at step (\d+) stayed above 10 x its running minimum (\S+) for 3"
                r" consecutive logs \(steps (\d+)-(\d+)\); stopping\. No checkpoint was written"
                r" yet", line)
  assert m, line
  loss, step, running_min = float(m[1]), int(m[2]), float(m[3])
  assert loss > 10 * running_min and step == int(m[5]) == int(m[4]) + 10
  assert checkpoint_steps(workdir) == []  # every periodic save fell inside the divergence
  assert max(r["step"] for r in read_metrics(workdir / "metrics.jsonl")) < step


def test_divergence_mid_run_keeps_only_good_checkpoints(tfds_data_dir, tmp_path):
  """Adam at lr 3 learns for a few dozen steps, then the loss climbs back to chance level:
  with factor 1.5 the run stops; checkpoints due while the loss was above were skipped, so the
  newest one (named in the message) predates the divergence."""
  c = digits_config(tfds_data_dir, learning_rate=3.0, warmup_steps=200)
  c.divergence.update(factor=1.5, patience=3)
  with pytest.raises(loop.DivergenceError) as err:
    loop.train_and_evaluate(c, str(tmp_path))
  msg = str(err.value)
  m = re.search(r"at step (\d+) stayed above 1.5 x .* \(steps (\d+)-\d+\).* The last good"
                r" checkpoint is step (\d+) in ", msg)
  assert m, msg
  stop, first_above, last_good = int(m[1]), int(m[2]), int(m[3])
  steps = checkpoint_steps(tmp_path)
  assert steps and steps[-1] == last_good < first_above <= stop
  assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) < stop
  # rerunning the same config resumes from the good checkpoint and stops at the same step
  with pytest.raises(loop.DivergenceError, match=f"at step {stop} stayed above"):
    loop.train_and_evaluate(c, str(tmp_path))
  assert checkpoint_steps(tmp_path) == steps


def test_parameter_norm_overflow_stops_before_a_checkpoint_of_it(tfds_data_dir, tmp_path):
  """SGD at lr 1e4 without clipping or momentum: the parameter norm overflows to inf while the
  loss and gradient norm are still finite (logged and checkpointed as "inf" before)."""
  c = digits_config(tfds_data_dir, name="sgd", learning_rate=1e4, grad_clip=0.0, momentum=0.0,
                    warmup_steps=50)
  c.update(log_every=1, checkpoint_every=1)
  c.model.hidden_widths = (256, 256)
  c.divergence.factor = 0.0  # only the non-finite check
  with pytest.raises(loop.NonFiniteLossError) as err:
    loop.train_and_evaluate(c, str(tmp_path))
  msg = str(err.value)
  m = re.search(r"non-finite training loss \((\S+)\), gradient norm \((\S+)\) or parameter norm"
                r" \(inf\) at step (\d+); stopping\. The last good checkpoint is step (\d+)", msg)
  assert m, msg
  assert np.isfinite(float(m[1])) and np.isfinite(float(m[2]))  # only the parameter norm was not
  bad, last_good = int(m[3]), int(m[4])
  assert checkpoint_steps(tmp_path)[-1] == last_good == bad - 1
  params = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(last_good) / "state")
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params["params"])]
  assert np.isfinite(np.sqrt(sum(np.sum(x**2) for x in leaves)))
  assert all(r["train/param_norm"] != "inf" for r in read_metrics(tmp_path / "metrics.jsonl"))


@pytest.mark.parametrize("key,value,message", [
    ("optim.learning_rate", "-0.001", "must be a positive finite number"),
    ("optim.learning_rate", "0", "must be a positive finite number"),
    ("optim.learning_rate", "nan", "must be a positive finite number"),
    ("divergence.factor", "0.5", "must be 0 (off) or a finite number > 1"),
    ("divergence.factor", "inf", "must be 0 (off) or a finite number > 1"),
    ("divergence.patience", "0", "must be a positive integer"),
])
def test_bad_setting_is_refused_at_start(tfds_data_dir, tmp_path, run_python, key, value,
                                         message):
  """A non-positive learning rate or a guard that could never (or always) fire: exit 2, one line
  naming the key, nothing written."""
  workdir = tmp_path / "w"
  out = run_python("-m", "experiments.train",
                   *digits_args(tfds_data_dir, workdir, f"--config.{key}={value}"))
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  [line] = error_lines(out.stderr)
  assert re.search(rf"config\.{re.escape(key)}=\S+ {re.escape(message)}", line), line
  for written in ("checkpoints", "metrics.jsonl", "config.json"):
    assert not os.path.exists(workdir / written), written
