"""jaxlab.algoperf.batch_table on hand-written trial records: the best trial, its steps to
target, the largest-LR flag and the seed columns; experiments.large_batch_table prints it."""

import math

import pytest

from jaxlab.algoperf import batch_table, suite, workloads
from jaxlab.errors import UserError

TARGET = workloads.get("digits_mlp").target  # 0.01838


def _trial(workdir, algorithm, k, lr, metric, batch=128):
  record = {"workload": "digits_mlp", "algorithm": algorithm, "ruleset": "external", "study": 0,
            "trial": k, "metric": "error_rate", "batch_size": batch,
            "hparams": {"learning_rate": lr}, "seed": k, "eval_steps": [40, 80, 120],
            "eval_metric": metric, "train_loss": [1.0] * 3, "seconds": [1.0, 2.0, 3.0]}
  path = suite.trial_path(str(workdir), "external", "digits_mlp", algorithm, 0, k)
  suite._write_json(path, record)  # pylint: disable=protected-access
  return record


def test_rows_pick_the_fastest_trial_and_flag_the_range_edge(tmp_path):
  suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 4, "grad_clip": 0.0,
                                       "lr_scale": 2.0})
  _trial(tmp_path, "adamw", 0, 1e-3, [0.05, 0.018, 0.010])   # reaches at 80
  _trial(tmp_path, "adamw", 1, 4e-3, [0.017, 0.012, 0.011])  # reaches at 40: the best
  _trial(tmp_path, "lamb", 0, 1e-3, [0.30, 0.20, 0.10])      # never: lowest final metric
  _trial(tmp_path, "lamb", 1, 3e-3, [0.30, 0.05, 0.02])
  runs = [{"eval_metric": [0.03, 0.015, 0.02]}, {"eval_metric": [0.04, 0.03, 0.025]}]
  confirm = str(tmp_path / "confirm/external/digits_mlp/adamw.json")
  suite._write_json(confirm, {"steps_to_target": [80.0, math.inf], "runs": runs})  # pylint: disable=protected-access
  got = {r["algorithm"]: r for r in batch_table.rows(str(tmp_path))}
  adamw, lamb = got["adamw"], got["lamb"]
  assert (adamw["learning_rate"], adamw["largest_lr"], adamw["steps_to_target"]) == (4e-3, True,
                                                                                    40.0)
  assert adamw["best_metric"] == pytest.approx(0.011)
  assert adamw["batch_scale"] == 4 and adamw["lr_scale"] == 2.0 and adamw["trials"] == 2
  assert adamw["seed_steps"] == "80 [80, 80] (1/2 reached)"
  assert adamw["seed_metric"] == "0.02 [0.015, 0.025]"
  assert lamb["learning_rate"] == 3e-3 and math.isinf(lamb["steps_to_target"])
  assert "seed_steps" not in lamb
  table = batch_table.markdown(list(got.values()))
  assert "| digits_mlp | 128 | 120 | adamw | 2 | 0.004 | yes | 40 | 0.011 |" in table
  assert "| digits_mlp | 128 | 120 | lamb | 2 | 0.003 | yes | - | 0.02 |  |  |" in table
  assert TARGET < 0.02  # the records above straddle the real target


def test_an_empty_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="no trials in .*experiments.algoperf"):
    batch_table.rows(str(tmp_path))


def test_the_experiment_prints_and_writes_the_table(tmp_path, run_python):
  _trial(tmp_path / "b4", "adamw", 0, 2e-3, [0.05, 0.017, 0.01])
  out = tmp_path / "table.md"
  done = run_python("-m", "experiments.large_batch_table", f"--workdirs={tmp_path / 'b4'}",
                    f"--markdown_out={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  row = "| digits_mlp | 128 | 120 | adamw | 1 | 0.002 | yes | 80 | 0.01 |  |  |"
  assert row in done.stdout and out.read_text() == batch_table.markdown(
      batch_table.rows(str(tmp_path / "b4")))
