"""Issue 15 item 1: the workdir is a record. A resume with a config that changes how the
checkpoints were trained stops with one line (exit 2) and leaves the workdir as it was, unless
--allow_config_change names the keys; then both configs are kept and metrics.jsonl marks the step.
"""

import hashlib
import json
import os

import pytest

from jaxlab.train import workdir as wd
from jaxlab.train.metrics import read_metrics
from tests.tiny_runs import mlp_args


def tiny_args(data_dir, workdir, num_steps=20, *extra):
  """The shared tiny MLP run (tests/tiny_runs.py), 20 steps by default, logging every 5."""
  return ["-m", "experiments.train",
          *mlp_args(data_dir, workdir, num_steps, "--config.log_every=5", *extra)]


def snapshot(workdir):
  """{relative path: sha256} of every file in the workdir except the (emptied) lock file."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if name != wd.LOCK:
        with open(path, "rb") as f:
          out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def error_lines(stderr, needle):
  return [line for line in stderr.splitlines() if needle in line]


@pytest.fixture
def trained(tfds_data_dir, tmp_path, run_python):
  """A workdir with a 20-step run (checkpoint at 20)."""
  workdir = tmp_path / "w"
  done = run_python(*tiny_args(tfds_data_dir, workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_changed_lr_and_batch_on_resume_exits_2_and_touches_nothing(trained, tfds_data_dir,
                                                                     run_python):
  before = snapshot(trained)
  run = run_python(*tiny_args(tfds_data_dir, trained, 40, "--config.optim.learning_rate=0.3",
                              "--config.batch_size=32"))
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  [line] = error_lines(run.stderr, "config differs")
  assert [ln for ln in run.stderr.splitlines() if ln.startswith(("E", "F"))] == [line]
  assert "batch_size: 64 -> 32" in line and "optim.learning_rate: 0.003 -> 0.3" in line
  assert "--allow_config_change=batch_size,optim.learning_rate" in line
  assert "num_steps" not in line  # raising it is allowed
  assert "Load dataset info" not in run.stderr  # stopped before building anything
  assert snapshot(trained) == before  # config.json, checkpoints, metrics.jsonl untouched


def test_raising_num_steps_and_cadence_resumes_and_versions_the_schedule(trained, tfds_data_dir,
                                                                          run_python):
  first = (trained / "config.json").read_text()
  run = run_python(*tiny_args(tfds_data_dir, trained, 40, "--config.log_every=2",
                              "--config.checkpoint_every=10"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in run.stderr
  rows = read_metrics(trained / "metrics.jsonl")
  assert [r["step"] for r in rows if "train/loss" in r] == [5, 10, 15, 20] + list(range(22, 41, 2))
  # num_steps sets the LR schedule's length: the config that trained steps 1-20 is kept
  assert (trained / "config.20.json").read_text() == first
  assert json.loads((trained / "config.json").read_text())["num_steps"] == 40
  assert [r for r in rows if "config_change" in r] == [{"step": 20, "config_change": ["num_steps"]}]


def test_lowering_num_steps_needs_the_flag(trained, tfds_data_dir, run_python):
  grown = run_python(*tiny_args(tfds_data_dir, trained, 40))
  assert grown.returncode == 0, grown.stderr[-3000:]
  run = run_python(*tiny_args(tfds_data_dir, trained, 30))
  assert run.returncode == 2
  [line] = error_lines(run.stderr, "config differs")
  assert "num_steps: 40 -> 30" in line and "step 40" in line


def test_allow_config_change_keeps_both_configs_and_marks_metrics(trained, tfds_data_dir,
                                                                  run_python):
  first = (trained / "config.json").read_text()
  args = tiny_args(tfds_data_dir, trained, 40, "--config.optim.learning_rate=0.01",
                   "--config.batch_size=32", "--allow_config_change=batch_size,optim")
  run = run_python(*args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in run.stderr
  assert (trained / "config.20.json").read_text() == first
  new = json.loads((trained / "config.json").read_text())
  assert (new["batch_size"], new["optim"]["learning_rate"], new["num_steps"]) == (32, 0.01, 40)
  assert sorted(os.listdir(trained / "checkpoints")) == ["20", "40"]
  marker = {"step": 20, "config_change": ["batch_size", "num_steps", "optim.learning_rate"]}
  rows = read_metrics(trained / "metrics.jsonl")
  assert [r for r in rows if "config_change" in r] == [marker]
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 20, 25, 30, 35, 40]

  # the same command again: nothing to do, nothing re-recorded; the old config still refused
  again = run_python(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert read_metrics(trained / "metrics.jsonl") == rows
  assert sorted(n for n in os.listdir(trained) if n.startswith("config")) == [
      "config.20.json", "config.json"]
  back = run_python(*tiny_args(tfds_data_dir, trained, 40))
  assert back.returncode == 2
  assert "batch_size: 32 -> 64" in error_lines(back.stderr, "config differs")[0]


def test_failing_runs_do_not_overwrite_config_json(trained, tfds_data_dir, tmp_path, run_python):
  """A bad value fails the run after the drift check passed (the key is allowed): config.json,
  the metrics and the checkpoints stay as they were; a fresh workdir gets no config.json."""
  before = snapshot(trained)
  bogus = ("--config.optim.schedule=bogus", "--allow_config_change=optim.schedule")
  run = run_python(*tiny_args(tfds_data_dir, trained, 40, *bogus))
  assert run.returncode != 0 and "bogus" in run.stderr
  assert snapshot(trained) == before
  assert json.loads((trained / "config.json").read_text())["optim"]["schedule"] == "cosine"

  fresh = tmp_path / "fresh"
  run = run_python(*tiny_args(tfds_data_dir, fresh, 20, "--config.optim.schedule=bogus"))
  assert run.returncode != 0 and "bogus" in run.stderr
  assert not (fresh / "config.json").exists() and not (fresh / "metrics.jsonl").exists()


# The pure functions behind it.

def test_diff_flattens_and_names_absent_keys():
  old = {"seed": 0, "optim": {"lr": 1e-3, "b1": 0.9}, "model": {"widths": [64, 64]}}
  new = {"seed": 0, "optim": {"lr": 3e-3}, "model": {"widths": [64, 64]}, "extra": 1}
  changes = wd.diff(old, new)
  assert changes == {"extra": ("<absent>", 1), "optim.b1": (0.9, "<absent>"),
                     "optim.lr": (1e-3, 3e-3)}
  assert wd.format_changes(changes) == (
      "extra: <absent> -> 1, optim.b1: 0.9 -> <absent>, optim.lr: 0.001 -> 0.003")


def test_which_keys_may_change():
  assert wd.is_allowed_silently("log_every", 50, 10)
  assert wd.is_allowed_silently("mesh.data", -1, 8)
  assert wd.is_allowed_silently("data.data_dir", "/a", "/b")
  assert wd.is_allowed_silently("num_steps", 600, 800)
  assert not wd.is_allowed_silently("num_steps", 800, 600)
  for key in ("seed", "batch_size", "quant", "param", "param.name", "param.base_width",
              "model.name", "optim.learning_rate", "data.augment_shift", "data.name", "eval_split"):
    assert not wd.is_allowed_silently(key, 1, 2), key
  assert wd.recorded_changes({"log_every": (1, 2), "num_steps": (1, 2)}) == {"num_steps": (1, 2)}


def test_check_resume_compares_with_the_config_that_trained_the_checkpoint(tmp_path):
  """config.<t>.json trained the checkpoints up to step t; config.json the later ones."""
  a, b = {"seed": 0, "num_steps": 20}, {"seed": 1, "num_steps": 40}
  (tmp_path / "config.20.json").write_text(json.dumps(a))
  (tmp_path / "config.json").write_text(json.dumps(b))
  assert wd.check_resume(str(tmp_path), {"seed": 1, "num_steps": 60}, 40) == {
      "num_steps": (40, 60)}
  assert wd.check_resume(str(tmp_path), {"seed": 0, "num_steps": 40}, 20) == {
      "num_steps": (20, 40)}
  with pytest.raises(wd.WorkdirError, match=r"config\.20\.json.*seed: 0 -> 1"):
    wd.check_resume(str(tmp_path), b, 20)
  assert wd.check_resume(str(tmp_path), b, 20, allow=["seed"]) == {
      "seed": (0, 1), "num_steps": (20, 40)}
