"""The parabola fit finds a quadratic's vertex, flags edge optima, skips diverged points; the seed
bootstrap covers the truth and tightens with seeds; the drift slope recovers a known drift."""

import json
import os

import numpy as np
import pytest

from experiments import lr_fit as lr_fit_cli
from jaxlab.analysis import lr_fit, plots
from jaxlab.errors import UserError
from tests.plot_checks import figure_problems, png_problems

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "results")
GRID = np.arange(-10, 0)


def _polyfit_vertex(x, y):
  a, b, _ = np.polyfit(x, y, 2)
  return -b / (2 * a)


def test_fit_recovers_vertex_of_exact_quadratic():
  y = 0.3 * (GRID + 5.3) ** 2 + 1.2
  opt = lr_fit.fit_optimum(GRID, y)
  assert opt.bracketed
  np.testing.assert_allclose(opt.log2_lr, -5.3, atol=1e-9)  # closed form
  np.testing.assert_allclose(opt.loss_at_min, 1.2, atol=1e-9)
  window = slice(3, 8)  # the 5 points -7..-3 around the argmin -5
  np.testing.assert_allclose(opt.log2_lr, _polyfit_vertex(GRID[window], y[window]), atol=1e-9)


def test_fit_uses_the_points_nearest_the_argmin():
  """On a skewed curve the vertex depends on the window: it is polyfit's on the `points` grid
  points centred on the argmin (truncated at an edge)."""
  y = (GRID + 5.3) ** 2 + 0.2 * (GRID + 5.3) ** 3 / 3 + 0.05 * (GRID + 5.3) ** 4
  i = int(np.argmin(y))
  for points, window in ((5, slice(i - 2, i + 3)), (3, slice(i - 1, i + 2)),
                         (7, slice(i - 3, i + 4))):
    opt = lr_fit.fit_optimum(GRID, y, points=points)
    np.testing.assert_allclose(opt.log2_lr, _polyfit_vertex(GRID[window], y[window]), atol=1e-9)
  near_edge = 0.3 * (GRID + 8.8) ** 2 + 0.1 * (GRID + 8.8) ** 3  # argmin -9, one point below
  opt = lr_fit.fit_optimum(GRID, near_edge)
  assert opt.bracketed and np.argmin(near_edge) == 1
  np.testing.assert_allclose(opt.log2_lr, _polyfit_vertex(GRID[:4], near_edge[:4]), atol=1e-9)


def test_argmin_on_the_edge_is_flagged():
  falling = 1.0 / (GRID + 20.0)  # still improving at the largest LR
  opt = lr_fit.fit_optimum(GRID, falling)
  assert not opt.bracketed and opt.log2_lr == GRID[-1] and opt.loss_at_min == falling[-1]
  opt = lr_fit.fit_optimum(GRID, falling[::-1])
  assert not opt.bracketed and opt.log2_lr == GRID[0]
  # an edge argmin whose fitted parabola has its vertex inside the grid is still flagged
  x, y = np.arange(5.0), np.array([0.0, 0.01, 1.0, 3.0, 6.0])
  assert 0 < _polyfit_vertex(x[:3], y[:3]) < 1
  assert lr_fit.fit_optimum(x, y) == (0.0, 0.0, False)
  # argmin just below diverged LRs: the last finite point is an edge too
  y = 0.3 * (GRID + 2.2) ** 2
  y[-2:] = [np.inf, np.nan]
  opt = lr_fit.fit_optimum(GRID, y)
  assert not opt.bracketed and opt.log2_lr == GRID[-3]


def test_concave_fit_falls_back_to_the_argmin():
  x = np.arange(5.0)
  y = np.array([0.5, 1.9, 0.0, 1.9, 0.5])  # interior argmin, best parabola opens downward
  assert np.polyfit(x, y, 2)[0] < 0
  assert lr_fit.fit_optimum(x, y) == (2.0, 0.0, False)


def test_vertex_outside_the_fitted_points_falls_back_to_the_argmin():
  x = np.arange(5.0)
  y = np.array([0.0, 0.5, -0.01, 2.0, 2.0])  # interior argmin, a > 0, vertex left of x = 0
  a, b, _ = np.polyfit(x, y, 2)
  assert a > 0 and -b / (2 * a) < 0
  assert lr_fit.fit_optimum(x, y) == (2.0, -0.01, False)


def test_non_finite_points_are_skipped():
  y = 0.3 * (GRID + 5.3) ** 2 + 1.2
  y[[0, 6, 9]] = [np.nan, np.inf, np.inf]  # -10, -4 (inside the window), -1
  opt = lr_fit.fit_optimum(GRID, y)
  assert opt.bracketed
  np.testing.assert_allclose(opt.log2_lr, -5.3, atol=1e-9)
  keep = np.isfinite(y)
  x_f, y_f = GRID[keep], y[keep]  # the 5 finite points nearest the argmin -5: -7, -6, -5, -3, -2
  i = int(np.argmin(y_f))
  np.testing.assert_array_equal(x_f[i - 2:i + 3], [-7, -6, -5, -3, -2])
  assert lr_fit.fit_optimum(GRID, np.full(GRID.shape, np.inf)).bracketed is False


def _synthetic(vertex, seeds, sigma=0.02, grid=GRID, rng=None, curvature=0.05):
  rng = np.random.default_rng(0) if rng is None else rng
  clean = curvature * (np.asarray(grid, float) - vertex) ** 2 + 1.0
  return {"log2_lr": [int(v) for v in grid],
          "eval_loss": (clean[:, None] + sigma * rng.standard_normal((len(grid), seeds))).tolist()}


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_seeds():
  widths = {}
  for seeds in (4, 32):
    out = lr_fit.bootstrap({"128": _synthetic(-4.6, seeds, rng=np.random.default_rng(seeds))},
                           n_boot=300)
    s = out["sizes"]["128"]
    assert s["interval"][0] <= -4.6 <= s["interval"][1], (seeds, s)
    assert s["interval"][0] <= s["log2_lr"] <= s["interval"][1]
    assert s["bracketed"] and s["bracketed_fraction"] == 1.0 and s["seeds"] == seeds
    widths[seeds] = s["interval"][1] - s["interval"][0]
  assert out["drift"] is None
  assert 0 < widths[32] < 0.6 * widths[4], widths


def test_bootstrap_replicates_see_a_diverged_seed():
  """A seed that diverged at an LR makes that LR's mean inf in every replicate that draws it."""
  r = _synthetic(-5.0, 2)
  r["eval_loss"][5][0] = float("nan")  # LR -5 (the optimum) diverged for seed 0
  s = lr_fit.bootstrap({"64": r}, n_boot=200)["sizes"]["64"]
  assert s["best_grid_log2_lr"] != -5  # point fit: the mean at -5 is inf
  assert s["interval"][1] - s["interval"][0] > 0  # only the replicates drawing seed 1 twice see -5


def _sweep(slope, seeds=8, sigma=0.01):
  """Sizes 64..1024, true optimum -3 + slope * log2(size / 64), each size's grid centred on its
  optimum's nearest integer (shifted grids)."""
  rng = np.random.default_rng(1)
  out, truth = {}, {}
  for size in (64, 128, 256, 512, 1024):
    v = -3.0 + slope * np.log2(size / 64) + 0.3
    grid = np.arange(round(v) - 4, round(v) + 5)
    out[str(size)], truth[size] = _synthetic(v, seeds, sigma, grid, rng, curvature=0.1), v
  return out, truth


def test_drift_recovers_a_known_slope_and_zero():
  falling, truth = _sweep(-1.0)
  out = lr_fit.bootstrap(falling, n_boot=300)
  d = out["drift"]
  assert d["interval"][0] <= -1.0 <= d["interval"][1] and d["interval"][1] < 0, d
  sizes = sorted(out["sizes"], key=int)
  points = [out["sizes"][s]["log2_lr"] for s in sizes]
  np.testing.assert_allclose(points, [truth[int(s)] for s in sizes], atol=0.15)
  reference = np.polyfit(np.log2([int(s) for s in sizes]), points, 1)[0]
  np.testing.assert_allclose(d["per_doubling"], reference, rtol=1e-12)
  flat = lr_fit.bootstrap(_sweep(0.0)[0], n_boot=300)
  assert flat["drift"]["interval"][0] <= 0.0 <= flat["drift"]["interval"][1], flat["drift"]
  assert lr_fit.drifts_disjoint(out, flat) and lr_fit.drifts_disjoint(out["drift"], flat["drift"])
  assert not lr_fit.drifts_disjoint(flat, flat)
  # `sizes` picks a subset: without the two largest the slope comes from three sizes
  sub = lr_fit.bootstrap(falling, n_boot=50, sizes=["64", "128", "256"])
  assert list(sub["sizes"]) == ["64", "128", "256"]


def test_reads_a_real_lr_transfer_json():
  path = os.path.join(DOCS, "lr_transfer_mlp", "lr_transfer.json")
  merged = lr_fit.read_results([path])
  report = lr_fit.fit_report(merged, n_boot=50)
  assert report["axis"] == "width"  # the file predates the axis key
  raw = json.load(open(path))["results"]
  assert set(report["parametrizations"]) == set(raw) == {"sp", "mup"}
  for name, r in report["parametrizations"].items():
    for size, s in r["sizes"].items():
      assert s["best_grid_log2_lr"] == raw[name][size]["best_log2_lr"]  # lr_transfer's argmin
      assert abs(s["log2_lr"] - s["best_grid_log2_lr"]) <= 1 and s["bracketed"]
  # SP's optimum falls with width, muP's does not fall (drift intervals do not overlap)
  sp, mup = report["parametrizations"]["sp"], report["parametrizations"]["mup"]
  assert sp["drift"]["interval"][1] < 0 < mup["drift"]["interval"][1]
  assert lr_fit.drifts_disjoint(sp, mup)
  assert "| sp | " in lr_fit.markdown(report)


def test_merging_files_joins_sizes_and_seeds():
  paths = [os.path.join(DOCS, d, "lr_transfer.json")
           for d in ("lr_transfer_lm_mup", "lr_transfer_lm_mup_seed1")]
  merged = lr_fit.read_results(paths)
  mup = merged["results"]["mup"]
  assert set(mup) == {"64", "128", "256", "512"} and merged["sources"]["mup"] == paths
  assert mup["64"]["eval_loss"].shape == (5, 1)
  assert mup["512"]["log2_lr"] == [-8.0, -7.0, -6.0] and mup["512"]["eval_loss"].shape == (3, 2)
  first = json.load(open(paths[0]))["results"]["mup"]["512"]
  second = json.load(open(paths[1]))["results"]["mup"]["512"]
  np.testing.assert_array_equal(mup["512"]["eval_loss"][:, 0], [v[0] for v in
                                                                first["eval_loss"][1:4]])
  np.testing.assert_array_equal(mup["512"]["eval_loss"][:, 1], [v[0] for v in
                                                                second["eval_loss"]])


def test_bad_input_names_the_flag_and_the_file(tmp_path):
  missing = str(tmp_path / "nope.json")
  with pytest.raises(UserError, match=r"--results.*nope\.json"):
    lr_fit.read_results([missing])
  no_results = tmp_path / "empty.json"
  no_results.write_text(json.dumps({"axis": "width"}))
  with pytest.raises(UserError, match=r"--results.*empty\.json.*results"):
    lr_fit.read_results([str(no_results)])
  with pytest.raises(UserError, match="--results"):
    lr_fit.read_results([])
  other_steps = tmp_path / "steps.json"
  other_steps.write_text(json.dumps({"steps": 7, "results": {"mup": {"64": _synthetic(-5, 1)}}}))
  with pytest.raises(UserError, match=r"steps\.json.*7 steps"):
    lr_fit.read_results([os.path.join(DOCS, "lr_transfer_lm_mup", "lr_transfer.json"),
                         str(other_steps)])


def _tiny_json(tmp_path):
  rng = np.random.default_rng(3)
  results = {"sp": {str(w): _synthetic(-4 - np.log2(w / 32), 3, grid=np.arange(-9, 0), rng=rng)
                    for w in (32, 64, 128)},
             "mup": {str(w): _synthetic(-4.2, 3, grid=np.arange(-9, 0), rng=rng)
                     for w in (32, 64, 128)}}
  results["mup"]["128"]["eval_loss"][-1] = [float("inf")] * 3  # a diverged LR
  path = tmp_path / "lr_transfer.json"
  path.write_text(json.dumps({"axis": "width", "results": results, "steps": 10,
                              "seeds": [0, 1, 2]}))
  return str(path)


def test_script_end_to_end(tmp_path, capsys):
  out = tmp_path / "fit"
  report = lr_fit_cli.run([_tiny_json(tmp_path)], str(out), n_boot=100)
  printed = capsys.readouterr().out
  assert "| width | LR grid (log2) | optimum log2 LR [95%]" in printed
  assert "drift intervals sp vs mup" in printed
  saved = json.loads((out / "lr_fit.json").read_text())
  assert saved == json.loads(json.dumps(report))
  assert saved["parametrizations"]["sp"]["drift"]["per_doubling"] == pytest.approx(-1, abs=0.3)
  assert png_problems((out / "lr_fit.png").read_bytes()) == []


def test_main_exits_2_with_one_line_on_a_missing_file(run_python, tmp_path):
  """Run as a CLI (a subprocess: parsing absl's global flags in-process would also validate the
  required flags of every other launcher imported into this test worker)."""
  done = run_python("-m", "experiments.lr_fit", f"--results={tmp_path}/missing.json",
                    f"--out={tmp_path}/o")
  assert done.returncode == 2, done.stderr[-2000:]
  assert "--results" in done.stderr and not (tmp_path / "o").exists()


def test_figure_has_no_problems(tmp_path):
  merged = lr_fit.read_results([_tiny_json(tmp_path)])
  report = lr_fit.fit_report(merged, n_boot=50)
  report["parametrizations"]["mup"]["sizes"]["64"]["bracketed"] = False  # a hollow marker
  fig = plots.lr_optimum_figure(report)
  assert figure_problems(fig) == []
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
  assert any("-1.0" in t.get_text() or "-0.9" in t.get_text() or "-1.1" in t.get_text()
             for t in ax.get_legend().get_texts())
