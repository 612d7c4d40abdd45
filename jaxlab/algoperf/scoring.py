"""AlgoPerf scoring (Dahl et al. 2023, Sec. 4 "Scoring"; Kasimbeg et al. 2025): a trial's time to
reach the validation target, a study's best trial, a workload's median study, performance ratios
to the best algorithm, performance profiles (Dolan & More 2002) and the benchmark score, the
normalized area under the profile for tau in [1, r_max].

Times are in any unit that increases with cost (steps, seconds); `math.inf` is "never reached".
"""

import math
from typing import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np

from jaxlab.errors import UserError


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def time_to_target(steps: Sequence[float], metric: Sequence[float], target: float) -> float:
  """The first evaluation point steps[i] whose metric[i] <= target (lower is better: error rate,
  loss); a NaN or infinite metric never reaches. math.inf if no evaluation reaches the target."""
  steps = np.asarray(steps, dtype=np.float64)
  metric = np.asarray(metric, dtype=np.float64)
  if steps.ndim != 1 or steps.shape != metric.shape:
    raise UserError(f"time_to_target: steps (shape {steps.shape}) and metric (shape "
                    f"{metric.shape}) must be 1-D and the same length")
  if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) <= 0):
    raise UserError(f"time_to_target: steps {steps.tolist()} must be finite and strictly "
                    "increasing")
  if not _is_number(target) or math.isnan(target):
    raise UserError(f"time_to_target: target={target!r} is not a number; pass the validation "
                    "target (a float)")
  reached = np.isfinite(metric) & (metric <= target)
  return float(steps[np.argmax(reached)]) if reached.any() else math.inf


def _check_times(times: Sequence[float], what: str) -> np.ndarray:
  times = np.asarray(times, dtype=np.float64)
  if times.ndim != 1 or times.size == 0:
    raise UserError(f"{what}: got {times.tolist()}; pass a non-empty list of times")
  bad = times[np.isnan(times) | (times < 0)]
  if bad.size:
    raise UserError(f"{what}: time {bad[0]} is not valid; pass times >= 0 (inf: not reached)")
  return times


def study_time(trial_times: Sequence[float]) -> float:
  """A study's time: the fastest of its trials (AlgoPerf's external tuning ruleset scores the best
  of the study's trials); math.inf if none reached the target."""
  return float(np.min(_check_times(trial_times, "study_time")))


def workload_time(study_times: Sequence[float]) -> float:
  """A workload's time: the median over its independent studies (AlgoPerf runs 5 studies per
  workload). math.inf if more than half the studies failed; with an even count the median is the
  mean of the middle two, so exactly half failing also gives math.inf ([1, inf] -> inf) and
  [1, 2, 3, inf] -> 2.5. Times are >= 0, so no NaN (inf - inf) can arise."""
  return float(np.median(_check_times(study_times, "workload_time")))


def _workloads(times: Mapping[str, Mapping[str, float]]) -> list[str]:
  """The workloads every algorithm lists (sorted); UserError naming an algorithm that lacks one."""
  if not isinstance(times, Mapping) or not times:
    raise UserError(f"got {times!r}; pass a non-empty dict {{algorithm: {{workload: value}}}}")
  workloads = sorted(set().union(*(set(by_workload) for by_workload in times.values())))
  if not workloads:
    raise UserError("no workloads: every algorithm's dict is empty; pass {workload: value}")
  for algorithm, by_workload in times.items():
    missing = [w for w in workloads if w not in by_workload]
    if missing:
      raise UserError(f"algorithm {algorithm!r} has no entry for workload {missing[0]!r}; every "
                      f"algorithm must list the same workloads ({workloads})")
  return workloads


def performance_ratios(
    times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
  """times[algorithm][workload] -> r[algorithm][workload] = t / (the best t of any algorithm on
  that workload) (Dahl et al. 2023, Eq. 1; Dolan & More 2002): 1 for the best, inf where t is
  inf, inf for every algorithm on a workload no algorithm reached. Times must be > 0."""
  workloads = _workloads(times)
  for algorithm, by_workload in times.items():
    for workload in workloads:
      t = by_workload[workload]
      if not _is_number(t) or math.isnan(t) or t <= 0:
        raise UserError(f"performance_ratios: times[{algorithm!r}][{workload!r}] = {t!r}; pass a "
                        "time > 0 (inf: not reached)")
  best = {w: min(float(by_workload[w]) for by_workload in times.values()) for w in workloads}
  return {
      algorithm: {
          w: (float(by_workload[w]) / best[w]
              if math.isfinite(best[w]) and math.isfinite(by_workload[w]) else math.inf)
          for w in workloads
      } for algorithm, by_workload in times.items()
  }


def _ratio_arrays(ratios: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
  """ratios -> {algorithm: its ratios, in sorted workload order}; checks they are >= 1 or inf."""
  workloads = _workloads(ratios)
  arrays = {}
  for algorithm, by_workload in ratios.items():
    r = np.array([by_workload[w] for w in workloads], dtype=np.float64)
    bad = [w for w, value in zip(workloads, r) if np.isnan(value) or value < 1]
    if bad:
      raise UserError(f"ratios[{algorithm!r}][{bad[0]!r}] = {by_workload[bad[0]]!r}; a "
                      "performance ratio is >= 1 (inf: not reached)")
    arrays[algorithm] = r
  return arrays


def performance_profile(ratios: Mapping[str, Mapping[str, float]],
                        taus: np.ndarray) -> dict[str, np.ndarray]:
  """rho_a(tau) = (number of workloads w with r_{a,w} <= tau) / (number of workloads), at each tau
  (Dolan & More 2002, Eq. 1; Dahl et al. 2023, Eq. 2): {algorithm: array shaped like taus}."""
  taus = np.asarray(taus, dtype=np.float64)
  return {algorithm: np.mean(r[:, None] <= taus.reshape(-1)[None, :], axis=0).reshape(taus.shape)
          for algorithm, r in _ratio_arrays(ratios).items()}


def benchmark_score(ratios: Mapping[str, Mapping[str, float]],
                    r_max: float = 4.0) -> dict[str, float]:
  """AlgoPerf's benchmark score B_a = 1 / (r_max - 1) * integral_1^r_max rho_a(tau) dtau (Dahl et
  al. 2023, Eq. 3), exactly: rho_a is a step function, so each workload with r <= r_max adds
  (r_max - r) / (r_max - 1) / (number of workloads). 1 for an algorithm best on every workload,
  0 for one that reaches no target within r_max times the best."""
  if not _is_number(r_max) or not 1 < r_max < math.inf:
    raise UserError(f"benchmark_score: r_max={r_max!r}; pass a finite number > 1 (AlgoPerf: 4)")
  return {algorithm: float(np.sum(np.clip(r_max - r, 0, None)) / (r_max - 1) / r.size)
          for algorithm, r in _ratio_arrays(ratios).items()}


def score_table(times: Mapping[str, Mapping[str, float]],
                ratios: Mapping[str, Mapping[str, float]],
                scores: Mapping[str, float], unit: str = "steps") -> str:
  """A markdown table, one row per algorithm by descending score (ties by name): algorithm, score,
  then per workload "time (ratio)", or "-" where the target was not reached."""
  workloads = _workloads(ratios)
  for algorithm in ratios:
    if algorithm not in scores or algorithm not in times:
      raise UserError(f"score_table: algorithm {algorithm!r} has ratios but no "
                      f"{'score' if algorithm not in scores else 'times'}; pass all three for "
                      "the same algorithms")
  lines = ["| algorithm | score | " + " | ".join(f"{w} ({unit})" for w in workloads) + " |",
           "|" + "---|" * (2 + len(workloads))]
  for algorithm in sorted(ratios, key=lambda a: (-scores[a], a)):
    cells = []
    for w in workloads:
      t, r = times[algorithm][w], ratios[algorithm][w]
      cells.append(f"{t:.4g} ({r:.2f})" if math.isfinite(t) and math.isfinite(r)
                   else "-")
    lines.append(f"| {algorithm} | {scores[algorithm]:.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def profile_figure(ratios: Mapping[str, Mapping[str, float]], r_max: float = 4.0):
  """A Figure of each algorithm's performance profile rho_a(tau) for tau in [1, r_max], drawn as
  the exact step function (a step up at each of its ratios), the legend giving each algorithm's
  benchmark score -- AlgoPerf's profile plot (Dahl et al. 2023, Fig. 1)."""
  scores = benchmark_score(ratios, r_max)
  arrays = _ratio_arrays(ratios)
  fig = Figure(figsize=(5.5, 3.6))
  ax = fig.subplots()
  styles = ("-", "--", "-.", ":")
  for i, (algorithm, r) in enumerate(arrays.items()):
    taus = np.unique(np.concatenate([[1.0, r_max], r[(r >= 1) & (r <= r_max)]]))
    rho = np.mean(r[:, None] <= taus[None, :], axis=0)
    ax.step(taus, rho, where="post", linestyle=styles[(i // 10) % len(styles)],
            label=f"{algorithm} (score {scores[algorithm]:.3f})")
  ax.set(xlim=(1, r_max), ylim=(-0.02, 1.02), xlabel="tau (time / best time)",
         ylabel="fraction of workloads within tau")
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  return fig
