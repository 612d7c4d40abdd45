"""Plots for the analysis tools (matplotlib, Agg; written as PNG)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def coord_check_grid(results: dict, path: str) -> None:
  """results[parametrization][width] = [scales at step t] -> rows: parametrizations, columns:
  steps; mean |x| vs width (log-log), one line per top-level layer (sublayers such as
  'block_0/attn' stay in the JSON) -- microsoft/mup's coord-check plot."""
  names = list(results)
  widths = sorted(next(iter(results.values())))
  steps = len(results[names[0]][widths[0]])
  fig, axes = plt.subplots(len(names), steps, figsize=(3 * steps, 2.8 * len(names)),
                           squeeze=False, sharex=True)
  for row, name in enumerate(names):
    layers = [k for k in results[name][widths[0]][0] if "/" not in k]
    for t in range(steps):
      ax = axes[row][t]
      for layer in layers:
        ax.plot(widths, [results[name][w][t][layer] for w in widths], marker="o", ms=3,
                label=layer)
      ax.set(xscale="log", yscale="log", title=f"{name}, step {t}")
      ax.set_xticks(widths, [str(w) for w in widths], fontsize=7)
      ax.minorticks_off()
      if t == 0:
        ax.set_ylabel("mean |x|")
      if row == len(names) - 1:
        ax.set_xlabel("width")
  axes[0][-1].legend(fontsize=6, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
