"""The plot checker finds each defect it names, on real Agg figures, and passes a clean one."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tests.plot_checks import figure_problems, png_problems  # noqa: E402


def _clean_figure():
  fig, ax = plt.subplots(figsize=(4, 3))
  ax.plot([1, 2, 3], [1, 4, 9], marker="o", label="squares")
  ax.plot([1, 2, 3], [1, 2, 3], marker="s", label="identity")
  ax.set(xlabel="x", ylabel="y", title="clean")
  ax.legend()
  fig.suptitle("a figure title")
  fig.tight_layout()
  return fig


def test_a_clean_figure_has_no_problems():
  fig = _clean_figure()
  assert figure_problems(fig) == []
  plt.close(fig)


def test_log_axis_within_a_decade_without_minor_ticks_has_no_labels():
  fig, ax = plt.subplots()
  ax.plot([1, 2, 3], [0.2, 0.3, 0.5], label="a")
  ax.set_yscale("log")
  ax.minorticks_off()
  problems = figure_problems(fig)
  assert any("labelled y tick" in p for p in problems), problems
  ax.minorticks_on()  # matplotlib labels minor ticks on a log axis spanning less than a decade
  assert not any("labelled y tick" in p for p in figure_problems(fig))
  plt.close(fig)


def test_switched_off_tick_labels_are_not_a_problem():
  fig, axes = plt.subplots(1, 2, sharey=True, figsize=(6, 3))
  for ax in axes:
    ax.plot([1, 2, 3], [1, 2, 3], label="a")
  fig.tight_layout()
  assert figure_problems(fig) == []
  plt.close(fig)


def test_a_line_hidden_under_another_and_lookalike_lines():
  fig, ax = plt.subplots()
  ax.plot([1, 2], [3, 4], color="C0", label="logits")
  ax.plot([1, 2], [3, 4], color="C1", label="readout")
  ax.plot([1, 2], [5, 6], color="C2", label="u")
  ax.plot([1, 2], [7, 8], color="C2", label="v")
  problems = figure_problems(fig)
  assert "axes 0: line 'logits' is hidden under 'readout' (same data)" in problems
  assert "axes 0: lines 'u' and 'v' look the same" in problems
  plt.close(fig)


def test_overlapping_tick_labels_and_cut_off_text():
  fig, ax = plt.subplots(figsize=(3, 2))
  names = [f"a long category name {i}" for i in range(8)]
  ax.bar(range(8), np.arange(8.0))
  ax.set_xticks(range(8), names)
  problems = figure_problems(fig)
  assert any("overlaps" in p and "x tick" in p for p in problems), problems
  assert any("cut off" in p for p in problems), problems
  plt.close(fig)


def test_png_checks():
  fig = _clean_figure()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  assert png_problems(buffer.getvalue()) == []
  blank = plt.figure(figsize=(3, 3))
  buffer = io.BytesIO()
  blank.savefig(buffer, format="png")
  assert png_problems(buffer.getvalue()) == ["PNG is blank (one colour)"]
  assert png_problems(b"GIF89a") == ["not a PNG (bad signature)"]
  plt.close("all")


def test_rotated_tick_labels_that_do_not_touch_pass():
  fig, ax = plt.subplots(figsize=(8, 3))
  names = ["fp32", "int8", "fp8", "fp8_delayed", "lsq_w4a8"]
  ax.bar(range(5), np.arange(1.0, 6.0))
  ax.set_xticks(range(5), names, rotation=35, ha="right", fontsize=8)
  fig.tight_layout()
  assert figure_problems(fig) == []
  ax.set_xticks(range(5), [n * 6 for n in names], rotation=35, ha="right", fontsize=8)
  fig.tight_layout()
  assert any("overlaps" in p for p in figure_problems(fig))
  plt.close(fig)
