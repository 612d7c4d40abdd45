"""experiments.algoperf at toy size: trial JSONs, scores and profiles, and a resumed run that
trains only the missing trial."""

import json
import os

import numpy as np


def _run(run_python, workdir, data_dir, *extra):
  done = run_python("-m", "experiments.algoperf", f"--workdir={workdir}",
                    f"--data_dir={data_dir}", "--workloads=digits_mlp,mnist5k_mlp",
                    "--algorithms=adamw,sgd_nesterov", "--trials=2", "--budget_scale=0.2",
                    "--cpu_devices=1", *extra)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_toy_suite_scores_and_resumes(run_python, tfds_data_dir, tmp_path):
  out = _run(run_python, tmp_path, tfds_data_dir)
  trials = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("trials/**/*.json"))
  assert len(trials) == 2 * 2 * 2, trials  # workloads x algorithms x trials
  assert "trials/external/digits_mlp/adamw/study0_trial1.json" in trials
  scores = json.loads((tmp_path / "scores.json").read_text())
  for measure in ("steps", "seconds"):
    got = scores[measure]["scores"]
    assert set(got) == {"adamw", "sgd_nesterov"} and all(0 <= s <= 1 for s in got.values())
  assert (tmp_path / "profiles.png").stat().st_size > 5000
  assert "Time to target in steps" in (tmp_path / "scores.md").read_text()
  assert "digits_mlp adamw study 0: 2 trials" in out

  victim = tmp_path / "trials/external/mnist5k_mlp/sgd_nesterov/study0_trial1.json"
  before = json.loads(victim.read_text())
  os.remove(victim)
  again = _run(run_python, tmp_path, tfds_data_dir)
  assert "mnist5k_mlp sgd_nesterov study 0: 1 trials" in again
  assert again.count(" trials, best ") == 1  # nothing else was retrained
  after = json.loads(victim.read_text())
  assert after["hparams"] == before["hparams"] and after["seed"] == before["seed"]
  np.testing.assert_allclose(after["eval_metric"], before["eval_metric"], atol=1e-6)


def test_confirm_reruns_the_best_trial_over_seeds(run_python, tfds_data_dir, tmp_path):
  out = _run(run_python, tmp_path, tfds_data_dir, "--confirm_seeds=3",
             "--workloads=digits_mlp", "--algorithms=adamw")
  record = json.loads((tmp_path / "confirm/external/digits_mlp/adamw.json").read_text())
  trials = [json.loads(p.read_text()) for p in tmp_path.glob("trials/external/digits_mlp/adamw/*")]
  target = record["target"]
  first = {t["trial"]: min([s for s, m in zip(t["eval_steps"], t["eval_metric"]) if m <= target],
                           default=np.inf) for t in trials}
  finals = {t["trial"]: t["eval_metric"][-1] for t in trials}
  assert record["hparams"] == next(t["hparams"] for t in trials
                                   if t["trial"] == record["best_trial"])
  if np.isfinite(min(first.values())):  # the fastest to the target, else the lowest final metric
    assert first[record["best_trial"]] == min(first.values())
  else:
    assert record["best_trial"] == min(finals, key=finals.get)
  assert len(record["runs"]) == 3 and len({r["seed"] for r in record["runs"]}) == 3
  table = (tmp_path / "scores.md").read_text()
  assert "Best trial rerun over seeds" in table
  best = [min(r["eval_metric"]) for r in record["runs"]]
  assert f"{np.mean(best):.4g} [{min(best):.4g}, {max(best):.4g}]" in table
  assert "digits_mlp adamw: best trial's hparams, 3 seeds" in out
