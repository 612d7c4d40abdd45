"""Time to target, study and workload times, performance ratios, profiles and the benchmark score
checked on hand-made cases and against brute force (counting, a fine numerical integral); the
score table and the profile figure."""

import math

import numpy as np
import pytest

from jaxlab.algoperf import scoring
from jaxlab.analysis import plots
from jaxlab.errors import UserError
from tests.plot_checks import figure_problems, png_problems

INF = math.inf
# times[algorithm][workload] in steps.
TIMES = {
    "adamw": {"mnist": 400.0, "cifar": 1200.0, "lm": 3000.0},
    "sgd": {"mnist": 600.0, "cifar": INF, "lm": 2000.0},
    "lion": {"mnist": 1000.0, "cifar": 3000.0, "lm": INF},
    "broken": {"mnist": INF, "cifar": INF, "lm": INF},
}


def test_time_to_target_is_the_first_evaluation_at_or_below_target():
  steps = [100, 200, 300, 400, 500]
  assert scoring.time_to_target(steps, [0.9, 0.5, 0.31, 0.3, 0.2], 0.3) == 400.0
  assert scoring.time_to_target(steps, [0.9, 0.25, 0.5, 0.2, 0.1], 0.3) == 200.0  # first, not last
  assert scoring.time_to_target(steps, [0.3, 0.9, 0.9, 0.9, 0.9], 0.3) == 100.0  # <= target
  assert scoring.time_to_target(steps, [0.9, 0.8, 0.7, 0.6, 0.5], 0.3) == INF


def test_nan_and_inf_never_reach_the_target():
  steps = [1, 2, 3, 4]
  assert scoring.time_to_target(steps, [math.nan, -INF, INF, 0.1], 0.3) == 4.0
  assert scoring.time_to_target(steps, [math.nan, INF, math.nan, INF], INF) == INF


def test_time_to_target_matches_a_brute_force_scan():
  rng = np.random.default_rng(0)
  for _ in range(50):
    steps = np.cumsum(rng.integers(1, 50, size=20)).astype(float)
    metric = rng.uniform(0, 1, size=20)
    metric[rng.random(20) < 0.1] = math.nan
    target = rng.uniform(0, 0.5)
    expected = INF
    for s, m in zip(steps, metric):
      if m <= target:  # False for NaN
        expected = s
        break
    assert scoring.time_to_target(steps, metric, target) == expected


@pytest.mark.parametrize("steps,metric,target", [
    ([1, 2, 3], [0.5, 0.4], 0.3),
    ([1, 3, 2], [0.5, 0.4, 0.3], 0.3),
    ([1, 2, 2], [0.5, 0.4, 0.3], 0.3),
    ([1, 2, 3], [0.5, 0.4, 0.3], math.nan),
    ([1, 2, 3], [0.5, 0.4, 0.3], "0.3"),
])
def test_time_to_target_rejects_bad_input(steps, metric, target):
  with pytest.raises(UserError):
    scoring.time_to_target(steps, metric, target)


def test_study_time_is_the_best_trial():
  assert scoring.study_time([500.0, INF, 300.0, 800.0]) == 300.0
  assert scoring.study_time([INF, INF]) == INF
  with pytest.raises(UserError, match="non-empty"):
    scoring.study_time([])
  with pytest.raises(UserError, match="nan"):
    scoring.study_time([1.0, math.nan])


def test_workload_time_is_the_median_study():
  assert scoring.workload_time([300.0, 100.0, 200.0, INF, 500.0]) == 300.0
  assert scoring.workload_time([100.0, 200.0, INF, INF, INF]) == INF  # most studies failed
  assert scoring.workload_time([100.0, 200.0, 300.0, INF]) == 250.0  # mean of the middle two
  assert scoring.workload_time([1.0, INF]) == INF  # half failed, even count
  assert scoring.workload_time([100.0, 200.0, INF, INF]) == INF
  with pytest.raises(UserError, match="-1"):
    scoring.workload_time([1.0, -1.0])


def test_workload_time_matches_sorting_by_hand():
  rng = np.random.default_rng(1)
  for count in range(1, 8):
    times = list(rng.integers(1, 100, size=count).astype(float))
    times = [INF if rng.random() < 0.3 else t for t in times]
    s = sorted(times)
    middle = s[count // 2] if count % 2 else (s[count // 2 - 1] + s[count // 2]) / 2
    assert scoring.workload_time(times) == middle


def test_performance_ratios_divide_by_the_best_time():
  ratios = scoring.performance_ratios(TIMES)
  assert ratios["adamw"] == {"mnist": 1.0, "cifar": 1.0, "lm": 1.5}
  assert ratios["sgd"] == {"mnist": 1.5, "cifar": INF, "lm": 1.0}
  assert ratios["lion"] == {"mnist": 2.5, "cifar": 2.5, "lm": INF}
  assert ratios["broken"] == {"mnist": INF, "cifar": INF, "lm": INF}


def test_a_workload_nobody_solves_is_inf_for_everyone():
  ratios = scoring.performance_ratios({"a": {"w": INF, "v": 2.0}, "b": {"w": INF, "v": 4.0}})
  assert ratios == {"a": {"w": INF, "v": 1.0}, "b": {"w": INF, "v": 2.0}}


def test_ratios_need_the_same_workloads_for_every_algorithm():
  with pytest.raises(UserError, match=r"'sgd'.*'lm'"):
    scoring.performance_ratios({"adamw": {"mnist": 1.0, "lm": 2.0}, "sgd": {"mnist": 1.0}})
  with pytest.raises(UserError, match=r"'adamw'.*'cifar'"):
    scoring.performance_ratios({"adamw": {"mnist": 1.0}, "sgd": {"mnist": 1.0, "cifar": 3.0}})
  with pytest.raises(UserError, match=r"'sgd'.*'mnist'.*> 0"):
    scoring.performance_ratios({"adamw": {"mnist": 1.0}, "sgd": {"mnist": 0.0}})
  with pytest.raises(UserError):
    scoring.performance_ratios({})


def test_performance_profile_counts_workloads_within_tau():
  ratios = scoring.performance_ratios(TIMES)
  taus = np.array([0.5, 1.0, 1.49, 1.5, 2.5, 100.0])
  profile = scoring.performance_profile(ratios, taus)
  np.testing.assert_array_equal(profile["adamw"], [0, 2 / 3, 2 / 3, 1, 1, 1])
  np.testing.assert_array_equal(profile["sgd"], [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
  np.testing.assert_array_equal(profile["lion"], [0, 0, 0, 0, 2 / 3, 2 / 3])
  np.testing.assert_array_equal(profile["broken"], np.zeros(6))


def test_hand_made_scores():
  scores = scoring.benchmark_score(scoring.performance_ratios(TIMES), r_max=4.0)
  # Per workload (4 - r) / 3, averaged over the 3 workloads; inf and r > 4 add nothing.
  assert scores == {"adamw": pytest.approx((1 + 1 + 2.5 / 3) / 3),
                    "sgd": pytest.approx((2.5 / 3 + 0 + 1) / 3),
                    "lion": pytest.approx((0.5 + 0.5 + 0) / 3), "broken": 0.0}
  assert scoring.benchmark_score({"a": {"w": 1.0, "v": 1.0}, "b": {"w": 2.0, "v": 3.0}}) \
      == {"a": 1.0, "b": pytest.approx((2 / 3 + 1 / 3) / 2)}
  assert scoring.benchmark_score({"a": {"w": INF, "v": INF}})["a"] == 0.0
  assert scoring.benchmark_score({"a": {"w": 2.5}}, r_max=4.0)["a"] == pytest.approx(0.5)
  assert scoring.benchmark_score({"a": {"w": 4.0, "v": 7.0}}, r_max=4.0)["a"] == 0.0
  # r_max = 2: only a ratio below 2 counts, with weight (2 - r) / (2 - 1).
  assert scoring.benchmark_score({"a": {"w": 1.25, "v": 3.0}}, r_max=2.0)["a"] \
      == pytest.approx(0.75 / 2)


@pytest.mark.parametrize("r_max", [4.0, 2.0, 10.0])
def test_score_is_the_normalized_area_under_the_profile(r_max):
  """A trapezoid sum of rho_a over 600001 taus in [1, r_max] against the exact score: the steps
  cost the sum at most (number of steps) * grid spacing."""
  rng = np.random.default_rng(2)
  times = {a: {f"w{w}": (INF if rng.random() < 0.2 else float(rng.uniform(1, 8)))
               for w in range(7)} for a in "abcde"}
  ratios = scoring.performance_ratios(times)
  taus = np.linspace(1.0, r_max, 600001)
  profile = scoring.performance_profile(ratios, taus)
  scores = scoring.benchmark_score(ratios, r_max)
  for algorithm, rho in profile.items():
    area = np.sum((rho[1:] + rho[:-1]) / 2 * np.diff(taus)) / (r_max - 1)
    assert scores[algorithm] == pytest.approx(area, abs=8 * (taus[1] - taus[0]))
  assert max(scores.values()) > 0.3 and min(scores.values()) < max(scores.values())


def test_benchmark_score_rejects_bad_input():
  with pytest.raises(UserError, match="r_max=1"):
    scoring.benchmark_score({"a": {"w": 1.0}}, r_max=1.0)
  with pytest.raises(UserError, match=r"'a'.*'w'.*0.5"):
    scoring.benchmark_score({"a": {"w": 0.5}})


def _cells(row: str) -> list[str]:
  return [c.strip() for c in row.strip().strip("|").split("|")]


def test_score_table_rows_by_descending_score():
  ratios = scoring.performance_ratios(TIMES)
  scores = scoring.benchmark_score(ratios)
  table = scoring.score_table(TIMES, ratios, scores, unit="steps")
  lines = table.strip().splitlines()
  assert _cells(lines[0]) == ["algorithm", "score", "cifar (steps)", "lm (steps)",
                              "mnist (steps)"]
  assert set(lines[1]) <= set("|-")
  rows = [_cells(line) for line in lines[2:]]
  assert [r[0] for r in rows] == sorted(TIMES, key=lambda a: -scores[a])
  assert [r[0] for r in rows] == ["adamw", "sgd", "lion", "broken"]
  by_name = {r[0]: r for r in rows}
  assert by_name["adamw"][1:] == [f"{scores['adamw']:.3f}", "1200 (1.00)", "3000 (1.50)",
                                  "400 (1.00)"]
  assert by_name["sgd"][2:] == ["-", "2000 (1.00)", "600 (1.50)"]
  assert by_name["broken"][1:] == ["0.000", "-", "-", "-"]


def test_score_table_breaks_ties_by_name():
  times = {"b": {"w": 1.0}, "a": {"w": 1.0}, "c": {"w": 2.0}}
  ratios = scoring.performance_ratios(times)
  table = scoring.score_table(times, ratios, scoring.benchmark_score(ratios), unit="s")
  rows = [_cells(line) for line in table.strip().splitlines()]
  assert rows[0] == ["algorithm", "score", "w (s)"]
  assert [r[0] for r in rows[2:]] == ["a", "b", "c"]


def test_profile_figure(tmp_path):
  ratios = scoring.performance_ratios(TIMES)
  scores = scoring.benchmark_score(ratios)
  fig = scoring.profile_figure(ratios)
  ax = fig.axes[0]
  lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
  assert len(lines) == len(TIMES)
  assert ax.get_xlabel() == "tau (time / best time)"
  assert ax.get_ylabel() == "fraction of workloads within tau"
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  for algorithm, text in zip(TIMES, legend):
    assert text.startswith(algorithm) and f"{scores[algorithm]:.3f}" in text
  # Each line is the profile: at every tau on a fine grid, the step drawn equals rho(tau).
  taus = np.linspace(1, 4, 301)
  profile = scoring.performance_profile(ratios, taus)
  for algorithm, line in zip(TIMES, lines):
    x, y = (np.asarray(v, float) for v in line.get_data())
    drawn = y[np.searchsorted(x, taus, side="right") - 1]
    np.testing.assert_array_equal(drawn, profile[algorithm])
  assert figure_problems(fig) == []
  path = tmp_path / "profile.png"
  plots.save_png(fig, str(path))
  assert path.exists() and path.stat().st_size > 5000
  assert png_problems(path.read_bytes()) == []


def test_scores_rank_like_pairwise_dominance():
  """An algorithm at least as fast as another on every workload scores at least as high (its
  ratios are no larger, the best time being shared)."""
  rng = np.random.default_rng(3)
  for _ in range(20):
    fast = {w: float(rng.uniform(1, 6)) for w in "uvwxyz"}
    slow = {w: t * float(rng.uniform(1, 2)) for w, t in fast.items()}
    other = {w: float(rng.uniform(1, 6)) for w in "uvwxyz"}
    scores = scoring.benchmark_score(
        scoring.performance_ratios({"fast": fast, "slow": slow, "other": other}))
    assert scores["fast"] >= scores["slow"]
