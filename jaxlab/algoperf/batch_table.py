"""The large-batch reality check's table (Nado et al. 2021): one row per (workload, batch, step
budget, algorithm) of experiments.algoperf workdirs, each run at one --batch_scale.

A row gives the tuning study's best trial (the fastest to the workload's target, else the lowest
final metric; suite.best_trial): its learning rate and whether it was the largest of the study
(then the search range, not the optimizer, may have limited it), its steps to target and its
best validation metric; and, where the workdir holds a --confirm_seeds rerun, steps to target
and best metric over the new seeds.
"""

import json
import math
import os

from jaxlab.algoperf import scoring, suite, workloads
from jaxlab.errors import UserError

HEADER = ("| workload | batch | steps | algorithm | trials | best trial's LR | largest LR drawn? | "
          "steps to target | best metric | seeds: steps to target | seeds: best metric |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def rows(workdir: str, ruleset: str = "external", workload_names=(), algorithms=()) -> list[dict]:
  """One dict per (workload, algorithm) of the workdir's trials (see the module docstring)."""
  records = suite.load_trials(workdir, ruleset)
  if not records:
    raise UserError(f"no trials in {workdir}/trials/{ruleset}; run experiments.algoperf there")
  settings = suite.load_settings(workdir) or suite.SETTING_DEFAULTS
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    if (not workload_names or r["workload"] in workload_names) and (
        not algorithms or r["algorithm"] in algorithms):
      groups.setdefault((r["workload"], r["algorithm"]), []).append(r)
  out = []
  for (name, algorithm), mine in sorted(groups.items()):
    target = workloads.get(name).target
    best = suite.best_trial(mine, target)
    lrs = [r["hparams"]["learning_rate"] for r in mine]
    row = {"workload": name, "algorithm": algorithm, "batch_size": best["batch_size"],
           "steps": best["eval_steps"][-1], "trials": len(mine),
           "batch_scale": settings.get("batch_scale", 1),
           "lr_scale": settings["lr_scale"],
           "learning_rate": best["hparams"]["learning_rate"],
           "largest_lr": best["hparams"]["learning_rate"] == max(lrs),
           "steps_to_target": scoring.time_to_target(best["eval_steps"], best["eval_metric"],
                                                     target),
           "best_metric": suite.lowest_metric(best)}
    confirm = os.path.join(workdir, "confirm", ruleset, name, f"{algorithm}.json")
    if os.path.exists(confirm):
      with open(confirm) as f:
        record = json.load(f)
      row["seed_steps"] = suite.seed_interval(record["steps_to_target"])
      row["seed_metric"] = suite.metric_interval(record["runs"])
    out.append(row)
  return out


def markdown(all_rows: list[dict]) -> str:
  lines = [HEADER]
  for r in sorted(all_rows, key=lambda r: (r["workload"], r["batch_size"], -r["steps"],
                                           r["algorithm"])):
    steps = "-" if math.isinf(r["steps_to_target"]) else f"{r['steps_to_target']:.0f}"
    lines.append(f"| {r['workload']} | {r['batch_size']} | {r['steps']} | {r['algorithm']} | "
                 f"{r['trials']} | {r['learning_rate']:.3g} | "
                 f"{'yes' if r['largest_lr'] else 'no'} | {steps} | {r['best_metric']:.4g} | "
                 f"{r.get('seed_steps', '')} | {r.get('seed_metric', '')} |")
  return "\n".join(lines) + "\n"
