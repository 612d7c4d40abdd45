"""The suite's bookkeeping: study trials, budgets, and times to target from trial records."""

import math

import numpy as np
import pytest

from jaxlab.algoperf import search, submission, suite, workloads
from jaxlab.errors import UserError


def _record(algorithm, workload, study, steps, metric, seconds=None):
  return {"algorithm": algorithm, "workload": workload, "study": study, "eval_steps": steps,
          "eval_metric": metric, "seconds": seconds or [s / 100 for s in steps]}


def test_times_are_the_median_over_studies_of_the_fastest_trial():
  records = [
      _record("a", "w", 0, [10, 20, 30], [0.5, 0.2, 0.1]),   # reaches 0.25 at 20
      _record("a", "w", 0, [10, 20, 30], [0.2, 0.1, 0.1]),   # at 10: study 0 -> 10
      _record("a", "w", 1, [10, 20, 30], [0.9, 0.8, 0.2]),   # study 1 -> 30
      _record("a", "w", 2, [10, 20, 30], [0.9, math.nan, 0.9]),  # study 2 -> inf
      _record("b", "w", 0, [10, 20, 30], [0.3, 0.3, 0.3]),   # never
  ]
  times = suite.times_to_target(records, {"w": 0.25})
  assert times == {"a": {"w": 30}, "b": {"w": math.inf}}  # median of [10, 30, inf]
  seconds = suite.times_to_target(records, {"w": 0.25}, "seconds")
  assert seconds["a"]["w"] == pytest.approx(0.3)
  with pytest.raises(UserError, match="'flops'"):
    suite.times_to_target(records, {"w": 0.25}, "flops")


def test_best_metrics_ignores_nan():
  records = [_record("a", "w", 0, [1, 2], [0.4, math.nan]), _record("a", "w", 1, [1, 2],
                                                                    [0.3, 0.35])]
  assert suite.best_metrics(records) == {"w": {"a": 0.3}}


def test_study_trials_and_budgets():
  sub = submission.from_zoo("lion")
  drawn = suite.study_trials(sub, "external", 2, 5)
  assert drawn == search.sample(sub.search_space, 5, seed=2)
  assert suite.study_trials(sub, "self", 0, 5) == [
      {k: float(sub.defaults[k]) for k in sub.search_space}]
  w = workloads.get("digits_mlp")
  assert suite.budget(w, "external", 0.5) == w.num_steps // 2
  assert suite.budget(w, "self", 1.0) == 3 * w.num_steps


def test_bad_arguments_are_named(tmp_path):
  with pytest.raises(UserError, match="--ruleset='open'"):
    suite.run(["digits_mlp"], ["adamw"], "open", 2, 1, str(tmp_path))
  with pytest.raises(UserError, match="unknown optimizer 'adamq'"):
    suite.run(["digits_mlp"], ["adamq"], "external", 2, 1, str(tmp_path))
  with pytest.raises(UserError, match="--trials and --studies must be >= 1"):
    suite.run(["digits_mlp"], ["adamw"], "external", 0, 1, str(tmp_path))


def test_a_workdir_refuses_other_settings(tmp_path):
  suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 1, "grad_clip": 0.0})
  suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 1, "grad_clip": 0.0})
  with pytest.raises(UserError, match=r"'batch_scale': \(1, 4\).*another --workdir"):
    suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 4, "grad_clip": 0.0})
  # a workdir written before lr_scale existed ran with its default, 1
  suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 1, "grad_clip": 0.0,
                                       "lr_scale": 1.0})
  with pytest.raises(UserError, match=r"'lr_scale': \(1.0, 2.0\)"):
    suite.check_settings(str(tmp_path), {"budget_scale": 1.0, "batch_scale": 1,
                                         "grad_clip": 0.0, "lr_scale": 2.0})


def test_grad_clip_clips_before_the_update():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  hp = {"learning_rate": 1.0, "momentum": 0.0, "weight_decay": 0.0, "warmup_fraction": 0.0}
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.asarray([3.0, 4.0, 0.0, 0.0])}  # global norm 5
  for clip, want in ((0.0, [-3.0, -4.0]), (1.0, [-0.6, -0.8]), (10.0, [-3.0, -4.0])):
    tx = submission.from_zoo("sgd_nesterov", grad_clip=clip).make(hp, 10)
    # step 0 of the schedule: warmup of max(0 * 10, 1) step -> lr 0; step 1 -> the peak
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    u, _ = tx.update(grads, state, params)
    assert jnp.allclose(u["w"][:2], jnp.asarray(want), atol=1e-6), (clip, u)
  with pytest.raises(UserError, match="--grad_clip=-1"):
    submission.from_zoo("adamw", grad_clip=-1.0)


def test_calibrated_targets_take_the_median_baseline():
  records = [dict(_record(a, "w", 0, [1], [v]), metric="error_rate")
             for a, v in (("adamw", 0.10), ("nadamw", 0.20), ("sgd_nesterov", 0.90),
                          ("lion", 0.01))]  # lion is not a baseline
  got = suite.calibrated_targets(records)
  assert got == {"w": pytest.approx(0.20 * workloads.TARGET_SLACK["error_rate"])}


def test_seed_intervals_of_steps_and_of_the_best_metric():
  assert suite.seed_interval([100.0, np.inf, 300.0]) == "200 [100, 300] (2/3 reached)"
  assert suite.seed_interval([np.inf, np.inf]) == "- (0/2 reached)"
  runs = [{"eval_metric": [0.5, 0.2, 0.3]}, {"eval_metric": [0.4, np.nan]},
          {"eval_metric": [np.nan]}]  # best 0.2 and 0.4; the third never finite
  assert suite.metric_interval(runs) == "0.3 [0.2, 0.4]"
  assert suite.metric_interval(runs[2:]) == "- (0/1 finite)"
