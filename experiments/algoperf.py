r"""Training-algorithm benchmark under AlgoPerf's rules (jaxlab.algoperf), at CPU scale.

  python -m experiments.algoperf --workdir=/tmp/algoperf \
      --algorithms=adamw,nadamw,sgd_nesterov,lamb,lars,lion --trials=8 --studies=1
  python -m experiments.algoperf --workdir=/tmp/algoperf --ruleset=self   # no tuning, 3x budget
  python -m experiments.algoperf --workdir=/tmp/algoperf_b4 --batch_scale=4 --lr_scale=2 \
      --confirm_seeds=4 --workloads=mnist5k_resnet --algorithms=sgd_nesterov,lars --grad_clip=1

Every (workload, algorithm, study) is tuned with --trials quasi-random points of the
algorithm's search space (jaxlab.optim.zoo + a warmup fraction), vmapped in one program where
the model allows; each trial writes workdir/trials/<ruleset>/<workload>/<algorithm>/
study<s>_trial<k>.json as soon as it is done, so a killed run restarts at the next unfinished
trial. Then it scores what the workdir holds: time to each workload's validation target
(optimizer steps, and training seconds), performance profiles and AlgoPerf's benchmark score
(area under the profile up to --r_max), written as scores.json, scores.md and profiles.png
(steps) / profiles_seconds.png. --confirm_seeds reruns each best trial with new seeds (the
large-batch reality check of Nado et al. 2021 reports intervals over seeds);
experiments.large_batch_table puts the runs at several --batch_scale side by side.
"""

import json
import os

from absl import app, flags
import numpy as np

from experiments import cpu_devices_flag
from jaxlab.algoperf import scoring, suite, workloads
from jaxlab.analysis import plots
from jaxlab.errors import UserError

DEFAULT_ALGORITHMS = ["adamw", "nadamw", "sgd_nesterov", "lamb", "lars", "lion"]

_WORKDIR = flags.DEFINE_string("workdir", None, "trial JSONs, scores and plots go here")
_ALGORITHMS = flags.DEFINE_list("algorithms", DEFAULT_ALGORITHMS,
                                "jaxlab.optim.zoo names (jaxlab.optim.zoo.OPTIMIZERS)")
_WORKLOADS = flags.DEFINE_list("workloads", list(workloads.WORKLOADS),
                               "jaxlab.algoperf.workloads names")
_RULESET = flags.DEFINE_enum("ruleset", "external", list(suite.RULESETS),
                             "external: quasi-random tuning; self: the defaults, 3x budget")
_TRIALS = flags.DEFINE_integer("trials", 8, "external tuning: trials per study")
_STUDIES = flags.DEFINE_integer("studies", 1, "independent studies; a workload's time is the "
                                "median over them")
_BUDGET = flags.DEFINE_float("budget_scale", 1.0, "multiplies every workload's step budget (and "
                             "keeps its evaluation interval)")
_BATCH = flags.DEFINE_integer("batch_scale", 1, "multiplies every workload's batch size "
                              "(the large-batch study)")
_CLIP = flags.DEFINE_float("grad_clip", 0.0, "> 0: every algorithm clips gradients to this "
                           "global norm first (0: none, as AlgoPerf's NAdamW baseline)")
_LR_SCALE = flags.DEFINE_float("lr_scale", 1.0, "multiplies both ends of every learning-rate "
                               "search range (large batches: e.g. sqrt(--batch_scale))")
_R_MAX = flags.DEFINE_float("r_max", 4.0, "performance profiles are integrated up to this ratio")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default $TFDS_DATA_DIR)")
_CONFIRM = flags.DEFINE_integer("confirm_seeds", 0, "if > 0: rerun each (workload, algorithm)'s "
                                "best trial with this many new seeds, for intervals over seeds")
_SCORE_ONLY = flags.DEFINE_bool("score_only", False, "score the trials in workdir, train none")
flags.mark_flags_as_required(["workdir"])


def score(workdir: str, ruleset: str, workload_names: list[str], algorithms: list[str],
          r_max: float) -> dict:
  """Scores (steps and seconds) of the trials in workdir for these workloads and algorithms;
  writes scores.json, scores.md and the profile PNGs."""
  records = [r for r in suite.load_trials(workdir, ruleset)
             if r["workload"] in workload_names and r["algorithm"] in algorithms]
  if not records:
    raise UserError(f"no trials of {workload_names} x {algorithms} in {workdir}/trials/{ruleset}")
  targets = {w: workloads.get(w).target for w in workload_names}
  out = {"ruleset": ruleset, "targets": targets, "r_max": r_max,
         "best_metric": suite.best_metrics(records), "trials": len(records),
         "calibrated_targets": suite.calibrated_targets(records)}
  tables = []
  for measure in suite.MEASURES:
    times = suite.times_to_target(records, targets, measure)
    missing = [(a, w) for a in algorithms for w in workload_names
               if w not in times.get(a, {})]
    if missing:
      raise UserError(f"no trials for (algorithm, workload) {missing[:4]} in {workdir}: run "
                      "without --score_only first")
    ratios = scoring.performance_ratios(times)
    scores = scoring.benchmark_score(ratios, r_max)
    out[measure] = {"times": times, "ratios": ratios, "scores": scores}
    tables.append(f"### Time to target in {measure}\n\n"
                  + scoring.score_table(times, ratios, scores, unit=measure))
    name = "profiles.png" if measure == "steps" else f"profiles_{measure}.png"
    plots.save_png(scoring.profile_figure(ratios, r_max), os.path.join(workdir, name))
  confirmed = confirm_table(workdir, ruleset, workload_names, algorithms)
  if confirmed:
    tables.append(confirmed)
  with open(os.path.join(workdir, "scores.json"), "w") as f:
    json.dump(out, f, indent=1, default=_json_number)
  with open(os.path.join(workdir, "scores.md"), "w") as f:
    f.write("\n\n".join(tables) + "\n")
  print("\n\n".join(tables))
  print("best validation metric per workload and algorithm (targets: "
        + ", ".join(f"{w} {t}" for w, t in targets.items()) + "):")
  for w, row in out["best_metric"].items():
    print(f"  {w}: " + ", ".join(f"{a} {v:.4f}" for a, v in sorted(row.items())))
  if out["calibrated_targets"]:
    print("targets these trials' baselines would set (median of their best x slack): "
          + ", ".join(f"{w} {t:.4g}" for w, t in out["calibrated_targets"].items()))
  return out


def confirm_table(workdir: str, ruleset: str, workload_names: list[str],
                  algorithms: list[str]) -> str:
  """Markdown: each best trial rerun over seeds: steps to target, mean [min, max] and how many
  seeds reached it, and the best validation metric each seed reached, mean [min, max] (the
  comparison left where no seed reaches the target); '' without confirm runs."""
  rows = []
  for w in workload_names:
    for a in algorithms:
      path = os.path.join(workdir, "confirm", ruleset, w, f"{a}.json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        record = json.load(f)
      rows.append(f"| {w} | {a} | {suite.seed_interval(record['steps_to_target'])} | "
                  f"{suite.metric_interval(record['runs'])} |")
  if not rows:
    return ""
  return ("### Best trial rerun over seeds\n\n"
          "| workload | algorithm | steps to target, mean [min, max] of the seeds that reach "
          "it | best validation metric, mean [min, max] over seeds |\n"
          "|---|---|---|---|\n" + "\n".join(rows))


def _json_number(x):
  return float(x) if isinstance(x, (np.floating, float)) else str(x)


def main(argv):
  del argv
  cpu_devices_flag.apply()
  if not _SCORE_ONLY.value:
    suite.run(_WORKLOADS.value, _ALGORITHMS.value, _RULESET.value, _TRIALS.value,
              _STUDIES.value, _WORKDIR.value, _DATA_DIR.value, _BUDGET.value, _BATCH.value,
              _CLIP.value, _LR_SCALE.value)
    if _CONFIRM.value:
      suite.confirm(_WORKLOADS.value, _ALGORITHMS.value, _RULESET.value, _CONFIRM.value,
                    _WORKDIR.value, _DATA_DIR.value, _BUDGET.value, _BATCH.value, _CLIP.value)
  score(_WORKDIR.value, _RULESET.value, _WORKLOADS.value, _ALGORITHMS.value, _R_MAX.value)


if __name__ == "__main__":
  app.run(main)
