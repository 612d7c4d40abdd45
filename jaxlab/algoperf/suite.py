"""The benchmark run: every (workload, algorithm, study) tuned under a ruleset, one JSON per
trial (a killed run resumes at the first unfinished trial), then AlgoPerf's scores.

Rulesets (Dahl et al. 2023, Sec. 4): 'external' tunes each study with `trials` quasi-random
points of the submission's search space (jaxlab.algoperf.search; study s draws with seed s)
and the study's time is its fastest trial to the target; 'self' runs the submission's defaults
once per study with 3x the step budget. A workload's time is the median over studies.
"""

import functools
import json
import os
from typing import Callable

import numpy as np

from jaxlab.algoperf import scoring, search, submission as submission_lib, trials as trials_lib
from jaxlab.algoperf import workloads as workloads_lib
from jaxlab.errors import UserError

RULESETS = ("external", "self")
# what a workdir written before a setting existed ran with
SETTING_DEFAULTS = {"lr_scale": 1.0}
SELF_TUNING_BUDGET = 3  # AlgoPerf gives self-tuning submissions 3x the external budget
MEASURES = ("steps", "seconds")


def trial_path(workdir: str, ruleset: str, workload: str, algorithm: str, study: int,
               trial: int) -> str:
  return os.path.join(workdir, "trials", ruleset, workload, algorithm,
                      f"study{study}_trial{trial}.json")


def study_trials(sub: submission_lib.Submission, ruleset: str, study: int,
                 num_trials: int) -> list[dict]:
  """The hyperparameters of a study's trials: quasi-random points (external) or the defaults."""
  if ruleset == "self":
    return [{k: float(sub.defaults[k]) for k in sub.search_space}]
  return search.sample(sub.search_space, num_trials, seed=study)


def check_settings(workdir: str, settings: dict) -> None:
  """Writes workdir/suite.json with the settings that change what a trial means (budget, batch,
  clipping) on the first run; a later run with other settings is a UserError, so a resumed
  workdir never mixes trials of different setups."""
  before = load_settings(workdir)
  if before is None:
    _write_json(os.path.join(workdir, "suite.json"), settings)
    return
  changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
  if changed:
    raise UserError(f"{workdir} holds trials run with other settings (before, now): {changed};"
                    " use another --workdir")


def load_settings(workdir: str) -> dict | None:
  """workdir/suite.json's settings, SETTING_DEFAULTS filling those older runs did not save; None
  if there is no suite.json."""
  path = os.path.join(workdir, "suite.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return {**SETTING_DEFAULTS, **json.load(f)}


def run(workload_names: list[str], algorithms: list[str], ruleset: str, num_trials: int,
        num_studies: int, workdir: str, data_dir: str = "", budget_scale: float = 1.0,
        batch_scale: int = 1, grad_clip: float = 0.0, lr_scale: float = 1.0,
        log: Callable[[str], None] = print) -> None:
  """Trains every trial without a JSON in workdir, writing each trial's JSON as soon as it is
  done; the trials still to run of one study are vmapped together where the model allows
  (jaxlab.algoperf.trials). lr_scale shifts every learning-rate search range
  (submission.from_zoo)."""
  if ruleset not in RULESETS:
    raise UserError(f"--ruleset={ruleset!r}; valid: {', '.join(RULESETS)}")
  if num_trials < 1 or num_studies < 1 or budget_scale <= 0 or batch_scale < 1:
    raise UserError("--trials and --studies must be >= 1, --budget_scale > 0, --batch_scale >= 1"
                    f" (got {num_trials}, {num_studies}, {budget_scale}, {batch_scale})")
  # bad names fail first
  subs = [submission_lib.from_zoo(a, grad_clip, lr_scale) for a in algorithms]
  loads = [workloads_lib.get(w) for w in workload_names]
  check_settings(workdir, {"budget_scale": budget_scale, "batch_scale": batch_scale,
                           "grad_clip": grad_clip, "lr_scale": lr_scale})
  for workload in loads:
    steps = budget(workload, ruleset, budget_scale)
    data = None
    for sub in subs:
      for study in range(num_studies):
        hparams = study_trials(sub, ruleset, study, num_trials)
        paths = [trial_path(workdir, ruleset, workload.name, sub.name, study, k)
                 for k in range(len(hparams))]
        todo = [k for k, p in enumerate(paths) if not os.path.exists(p)]
        if not todo:
          continue
        if data is None:
          data = workloads_lib.load(workload, data_dir, num_steps=steps,
                                    batch_size=_batch(workload, data_dir, batch_scale))
        seeds = [1000 * study + k for k in todo]
        base = {"workload": workload.name, "algorithm": sub.name, "ruleset": ruleset,
                "study": study, "metric": workload.metric,
                "batch_size": int(data.train_batches[data.task.targets_key].shape[1])}
        results = trials_lib.run_trials(
            data, sub, [hparams[k] for k in todo], seeds,
            on_result=functools.partial(_save_trial, [paths[k] for k in todo], todo, base))
        best = min(min(r["eval_metric"], default=np.inf) for r in results)
        log(f"{workload.name} {sub.name} study {study}: {len(todo)} trials, best "
            f"{workload.metric} {best:.4f}, {results[0]['seconds'][-1] * len(todo):.0f} s")


def best_trial(records: list[dict], target: float) -> dict:
  """The trial that reached `target` in the fewest steps (ties: lower final metric); without
  one, the trial with the lowest final metric (NaN last)."""
  def key(r):
    final = r["eval_metric"][-1]
    return (scoring.time_to_target(r["eval_steps"], r["eval_metric"], target),
            final if np.isfinite(final) else np.inf)
  return min(records, key=key)


def confirm(workload_names: list[str], algorithms: list[str], ruleset: str, num_seeds: int,
            workdir: str, data_dir: str = "", budget_scale: float = 1.0, batch_scale: int = 1,
            grad_clip: float = 0.0, log: Callable[[str], None] = print) -> None:
  """Reruns each (workload, algorithm)'s best trial with num_seeds fresh init seeds (vmapped
  where the model allows), for intervals over seeds (Nado et al. 2021 report them); writes
  workdir/confirm/<ruleset>/<workload>/<algorithm>.json unless it exists."""
  records = load_trials(workdir, ruleset)
  for name in workload_names:
    workload = workloads_lib.get(name)
    data = None
    for algorithm in algorithms:
      path = os.path.join(workdir, "confirm", ruleset, name, f"{algorithm}.json")
      mine = [r for r in records if r["workload"] == name and r["algorithm"] == algorithm]
      if os.path.exists(path) or not mine:
        continue
      best = best_trial(mine, workload.target)
      if data is None:
        data = workloads_lib.load(workload, data_dir,
                                  num_steps=budget(workload, ruleset, budget_scale),
                                  batch_size=_batch(workload, data_dir, batch_scale))
      seeds = [10_000 + i for i in range(num_seeds)]
      runs = trials_lib.run_trials(data, submission_lib.from_zoo(algorithm, grad_clip),
                                   [best["hparams"]] * num_seeds, seeds)
      steps = [scoring.time_to_target(r["eval_steps"], r["eval_metric"], workload.target)
               for r in runs]
      _write_json(path, {"workload": name, "algorithm": algorithm, "ruleset": ruleset,
                         "target": workload.target, "best_trial": best["trial"],
                         "study": best["study"], "hparams": best["hparams"],
                         "steps_to_target": steps, "runs": runs})
      log(f"{name} {algorithm}: best trial's hparams, {num_seeds} seeds: steps to target "
          f"{seed_interval(steps)}")


def seed_interval(steps: list[float]) -> str:
  """'mean [min, max] (k/n reached)' of the seeds' steps to target that are finite; '- (0/n
  reached)' when none is."""
  reached = [t for t in steps if np.isfinite(t)]
  spread = (f"{np.mean(reached):.0f} [{min(reached):.0f}, {max(reached):.0f}]" if reached
            else "-")
  return f"{spread} ({len(reached)}/{len(steps)} reached)"


def metric_interval(runs: list[dict]) -> str:
  """'mean [min, max]' over runs of the lowest finite validation metric each reached ('-' for a
  run with none, which is left out)."""
  best = [b for b in (lowest_metric(r) for r in runs) if np.isfinite(b)]
  if not best:
    return f"- (0/{len(runs)} finite)"
  return f"{np.mean(best):.4g} [{min(best):.4g}, {max(best):.4g}]"


def budget(workload: workloads_lib.Workload, ruleset: str, budget_scale: float) -> int:
  scale = budget_scale * (SELF_TUNING_BUDGET if ruleset == "self" else 1)
  return max(int(round(workload.num_steps * scale)), 1)


def _batch(workload: workloads_lib.Workload, data_dir: str, batch_scale: int) -> int | None:
  return None if batch_scale == 1 else workload.config(data_dir).batch_size * batch_scale


def _save_trial(paths: list[str], trial_ids: list[int], base: dict, i: int,
                result: dict) -> None:
  """run_trials' on_result: the i-th trial run, saved as soon as it is done."""
  _write_json(paths[i], {**base, "trial": trial_ids[i], **result})


def _write_json(path: str, record: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)


def load_trials(workdir: str, ruleset: str) -> list[dict]:
  """Every trial JSON of a ruleset under workdir."""
  root = os.path.join(workdir, "trials", ruleset)
  out = []
  for folder, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      if name.endswith(".json"):
        with open(os.path.join(folder, name)) as f:
          out.append(json.load(f))
  return out


def times_to_target(records: list[dict], targets: dict[str, float],
                    measure: str = "steps") -> dict[str, dict[str, float]]:
  """times[algorithm][workload]: per study the fastest trial to the workload's target (in
  `measure`: optimizer steps or training seconds), then the median over studies."""
  if measure not in MEASURES:
    raise UserError(f"measure {measure!r}; valid: {', '.join(MEASURES)}")
  per_study: dict[tuple, list[float]] = {}
  for r in records:
    axis = r["eval_steps"] if measure == "steps" else r["seconds"]
    t = scoring.time_to_target(axis, r["eval_metric"], targets[r["workload"]])
    per_study.setdefault((r["algorithm"], r["workload"], r["study"]), []).append(t)
  studies: dict[tuple, list[float]] = {}
  for (algorithm, workload, _), ts in sorted(per_study.items()):
    studies.setdefault((algorithm, workload), []).append(scoring.study_time(ts))
  times: dict[str, dict[str, float]] = {}
  for (algorithm, workload), ts in studies.items():
    times.setdefault(algorithm, {})[workload] = scoring.workload_time(ts)
  return times


BASELINES = ("adamw", "nadamw", "sgd_nesterov")


def calibrated_targets(records: list[dict], baselines=BASELINES) -> dict[str, float]:
  """target[workload] = relaxed_target(median over the baselines present of their best
  validation metric): how the workloads' targets were set (workloads module docstring)."""
  best = best_metrics(records)
  metric = {r["workload"]: r["metric"] for r in records}
  out = {}
  for workload, row in best.items():
    values = [row[b] for b in baselines if b in row]
    if values:
      out[workload] = workloads_lib.relaxed_target(metric[workload], float(np.median(values)))
  return out


def lowest_metric(record: dict) -> float:
  """The lowest finite validation metric a run reached (inf if none is finite)."""
  return min((v for v in record["eval_metric"] if np.isfinite(v)), default=np.inf)


def best_metrics(records: list[dict]) -> dict[str, dict[str, float]]:
  """best[workload][algorithm]: the lowest validation metric any trial reached."""
  best: dict[str, dict[str, float]] = {}
  for r in records:
    value = lowest_metric(r)
    if np.isfinite(value):
      row = best.setdefault(r["workload"], {})
      row[r["algorithm"]] = min(row.get(r["algorithm"], np.inf), value)
  return best
