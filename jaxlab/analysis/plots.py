"""Plots for the analysis tools: each returns a matplotlib Figure built without pyplot, so
importing jaxlab never switches a notebook's backend and no figure lingers in pyplot's registry;
`save_png` writes one (Agg). In a notebook, display a returned figure by evaluating it."""

from matplotlib import ticker
from matplotlib.figure import Figure
import numpy as np


def _merge_identical(series: dict[str, list[float]]) -> dict[str, list[float]]:
  """Layers whose values coincide (an MLP's 'readout' output is its 'logits') become one line
  labelled 'logits = readout', instead of one line drawn exactly over the other."""
  merged: dict[tuple, list[str]] = {}
  for name, values in series.items():
    merged.setdefault(tuple(values), []).append(name)
  return {" = ".join(names): list(values) for values, names in merged.items()}


def coord_check_figure(results: dict):
  """results[parametrization][width] = [scales at step t] -> a Figure: rows parametrizations,
  columns steps; mean |x| vs width (log-log, one y scale per row, so the growth over steps is
  visible), one line per top-level layer (sublayers such as 'block_0/attn' stay in the JSON)
  -- microsoft/mup's coord-check plot. Width keys may be ints or strings (the JSON)."""
  names = list(results)
  widths = sorted(next(iter(results.values())), key=int)
  steps = len(results[names[0]][widths[0]])
  fig = Figure(figsize=(3 * steps, 2.8 * len(names)))
  axes = fig.subplots(len(names), steps, squeeze=False, sharex=True, sharey="row")
  x = [int(w) for w in widths]
  for row, name in enumerate(names):
    layers = [k for k in results[name][widths[0]][0] if "/" not in k]
    for t in range(steps):
      ax = axes[row][t]
      series = _merge_identical({layer: [results[name][w][t][layer] for w in widths]
                                 for layer in layers})
      for (label, values), marker in zip(series.items(), "os^vDP*X"):
        ax.plot(x, values, marker=marker, ms=3, label=label)
      ax.set(xscale="log", yscale="log", title=f"{name}, step {t}")
      ax.set_xticks(x, [str(w) for w in x], fontsize=7)
      ax.xaxis.set_minor_locator(ticker.NullLocator())
      # Ticks at 1, 2, 5 x 10^k labelled as plain numbers: a row's values often span less than
      # a decade, where decade-only ticks would leave the axis without a single label.
      ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
      ax.yaxis.set_minor_locator(ticker.NullLocator())
      ax.tick_params(axis="y", labelsize=7)
      if t == 0:
        ax.set_ylabel("mean |x|")
      if row == len(names) - 1:
        ax.set_xlabel("width")
    axes[row][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside
  fig.tight_layout()
  return fig


def save_png(fig, path: str) -> None:
  """Writes `fig` to `path` as PNG (110 dpi)."""
  fig.savefig(path, dpi=110)


def coord_check_grid(results: dict, path: str) -> None:
  """`coord_check_figure(results)` written to `path` as PNG."""
  save_png(coord_check_figure(results), path)


def lr_transfer_figure(results: dict, axis: str = "width"):
  """results[parametrization][width] = {"log2_lr", "eval_loss" [LR, seed]} (lr_transfer.json)
  -> final eval loss (mean over the seeds that stayed finite) vs log2 LR: a panel per
  parametrization, a curve per width (or depth: `axis`)."""
  fig = Figure(figsize=(5 * len(results), 3.6))
  axes = fig.subplots(1, len(results), squeeze=False)
  for ax, (name, by_width) in zip(axes[0], results.items()):
    for width, r in by_width.items():
      loss = np.asarray(r["eval_loss"], float)
      loss = np.nanmean(np.where(np.isfinite(loss), loss, np.nan), axis=1)
      ax.plot(r["log2_lr"], loss, marker="o", ms=3, label=f"{axis} {width}")
    ax.set(title=name, xlabel="log2 learning rate", ylabel="final eval loss")
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def lr_optimum_figure(report: dict):
  """report["parametrizations"][param]["sizes"][size] = {"log2_lr", "interval", "bracketed"}
  (jaxlab.analysis.lr_fit.fit_report) -> the fitted optimum log2 LR vs log2 size with its 95%
  bootstrap interval as error bars, a line per parametrization (nudged sideways so the bars do
  not hide each other; an unbracketed optimum drawn hollow), the drift per doubling in the
  legend."""
  fig = Figure(figsize=(5.5, 3.8))
  ax = fig.subplots()
  params = report["parametrizations"]
  all_sizes = sorted({float(s) for r in params.values() for s in r["sizes"]})
  for k, ((name, r), marker) in enumerate(zip(params.items(), "osD^vP*X" * 4)):
    sizes = sorted(r["sizes"], key=float)
    x = np.log2([float(s) for s in sizes]) + 0.06 * (k - (len(params) - 1) / 2)
    y = np.array([r["sizes"][s]["log2_lr"] for s in sizes])
    lo, hi = np.array([r["sizes"][s]["interval"] for s in sizes]).T
    d = r["drift"]
    label = name if d is None else (f"{name}: {d['per_doubling']:+.2f} "
                                    f"[{d['interval'][0]:+.2f}, {d['interval'][1]:+.2f}]/doubling")
    bars = ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], marker=marker,
                       ms=5, capsize=3, label=label)
    color = bars[0].get_color()
    edge = [not r["sizes"][s]["bracketed"] for s in sizes]
    if any(edge):
      ax.plot(x[edge], y[edge], linestyle="none", marker=marker, ms=5, color="white",
              markeredgecolor=color, label="_unbracketed")
  ax.set_xticks(np.log2(all_sizes), [f"{s:g}" for s in all_sizes])
  ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=False, nbins=6, min_n_ticks=3))
  ax.set(xlabel=f"{report.get('axis', 'width')} (log2 scale)",
         ylabel="optimal log2 LR (parabola fit)",
         title="optimum and 95% bootstrap interval; hollow: on the grid edge")
  ax.title.set_fontsize(8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def depth_profile_figure(results: dict):
  """results[run] = {"block_variance", "grad_norms", "removal_loss_delta"} per block
  (depth_study.json) -> three panels vs block index, a curve per run."""
  fig = Figure(figsize=(15, 3.8))
  axes = fig.subplots(1, 3)
  for name, r in results.items():  # name: placement, or "placement@lr" in an LR sweep
    blocks = np.arange(1, len(r["block_variance"]) + 1)
    axes[0].plot(blocks, r["block_variance"], marker="o", ms=3, label=name)
    axes[1].plot(blocks, r["grad_norms"], marker="o", ms=3, label=name)
    axes[2].plot(blocks, r["removal_loss_delta"], marker="o", ms=3, label=name)
  axes[0].set(yscale="log", xlabel="block", ylabel="residual-stream variance after block")
  axes[1].set(yscale="log", xlabel="block", ylabel="gradient norm of block params")
  axes[2].set(xlabel="block removed", ylabel="val loss increase")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def depth_lr_figure(results: dict):
  """results[run] = {"placement", "learning_rate", "val_loss"} (a depth_study LR sweep) ->
  val loss vs peak LR, a curve per placement."""
  fig = Figure(figsize=(5.5, 3.8))
  ax = fig.subplots()
  for name in dict.fromkeys(r["placement"] for r in results.values()):
    runs = sorted((r["learning_rate"], r["val_loss"]) for r in results.values()
                  if r["placement"] == name)
    ax.plot(*zip(*runs), marker="o", ms=4, label=name)
  ax.set(xscale="log", xlabel="peak learning rate", ylabel="val loss")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def quant_figure(results: dict, title: str):
  """results[policy] = {"kind": "qat"|"ptq", "eval_accuracy", "eval_loss"}, with "fp32"
  (quant_study.json) -> eval accuracy and loss per policy as bars, fp32 as a dashed line."""
  names = list(results)
  colors = ["#777777" if n == "fp32" else ("#4c72b0" if results[n]["kind"] == "qat"
                                           else "#dd8452") for n in names]
  fig = Figure(figsize=(max(8, 1.1 * len(names) + 4), 3.8))
  axes = fig.subplots(1, 2)
  for ax, key, label in ((axes[0], "eval_accuracy", "eval accuracy"),
                         (axes[1], "eval_loss", "eval loss")):
    values = [results[n][key] for n in names]
    ax.bar(range(len(names)), values, color=colors)
    ax.axhline(results["fp32"][key], color="k", ls="--", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(label)
    lo, hi = min(values), max(values)
    pad = 0.1 * (hi - lo) + 1e-3
    ax.set_ylim(max(0.0, lo - pad), hi + pad)  # zoomed on the differences
  axes[0].set_title(f"{title}: QAT (blue) / PTQ (orange) vs fp32 (grey)", fontsize=9)
  fig.tight_layout()
  return fig


def landscape_1d_figure(curves: dict, xlabel: str = "alpha"):
  """curves[label] = (x, loss) (jaxlab.weights.landscape.slice_1d / interpolation_slice) -> loss
  vs x, a line per label (Li et al. 2018, Fig. 2-style; x = lambda for an interpolation)."""
  fig = Figure(figsize=(5.5, 3.8))
  ax = fig.subplots()
  for (label, (x, loss)), marker in zip(curves.items(), "osD^vP*X" * 4):
    ax.plot(np.asarray(x, float), np.asarray(loss, float), marker=marker, ms=3, label=label)
  ax.set(xlabel=xlabel, ylabel="loss")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def landscape_contour_figure(alphas, betas, loss, title: str = "loss landscape"):
  """loss [len(alphas), len(betas)] (jaxlab.weights.landscape.slice_2d) -> filled contours of
  log10 loss over (alpha, beta), every third level also drawn as a line, the centre (the params)
  starred (Li et al. 2018, Fig. 1-style)."""
  a, b = np.asarray(alphas, float), np.asarray(betas, float)
  z = np.log10(np.maximum(np.asarray(loss, float), 1e-12))
  fig = Figure(figsize=(5.2, 4.2))
  ax = fig.subplots()
  filled = ax.contourf(a, b, z.T, levels=15, cmap="viridis")
  ax.contour(a, b, z.T, levels=filled.levels[::3], colors="white", linewidths=0.6)
  ax.plot([0.0], [0.0], marker="*", ms=10, color="red", linestyle="none", label="params")
  fig.colorbar(filled, ax=ax, label="log10 loss")
  ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)", title=title)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  return fig


def sparsity_figure(report: dict, title: str = "sparsity per tensor"):
  """report (jaxlab.weights.pruning.sparsity_report) -> a horizontal bar per tensor of its
  fraction of zeros, the global fraction as a dashed line."""
  names = list(report["tensors"])
  values = [report["tensors"][n]["sparsity"] for n in names]
  fig = Figure(figsize=(7, 1.0 + 0.22 * len(names)))
  ax = fig.subplots()
  ax.barh(range(len(names)), values, color="#4c72b0")
  ax.axvline(report["global"]["sparsity"], color="k", ls="--", lw=0.8,
             label=f"global {report['global']['sparsity']:.3f}")
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.invert_yaxis()  # tree order top to bottom
  ax.set(xlim=(0, 1), xlabel="fraction of zeros", title=title)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  return fig


def barrier_figure(results: dict):
  """results[width] = {"summary": {method: {"mean", "min", "max"}}, "pairs": [{method: {"lam",
  "loss"}}]} (experiments.weight_space) -> left: test-loss barrier vs width per alignment method
  (mean over seed pairs, bars from the smallest to the largest pair; symlog y); right: test loss
  along the path at the widest width, first pair, per method (Ainsworth et al. 2023, Fig. 4)."""
  fig = Figure(figsize=(10, 3.8))
  left, right = fig.subplots(1, 2)
  widths = sorted(results, key=int)
  methods = list(results[widths[0]]["summary"])
  for method, marker in zip(methods, "osD^vP*X"):
    s = [results[w]["summary"][method] for w in widths]
    mean = np.asarray([r["mean"] for r in s])
    err = np.asarray([[r["mean"] - r["min"] for r in s], [r["max"] - r["mean"] for r in s]])
    left.errorbar([int(w) for w in widths], mean, yerr=err, marker=marker, ms=4, capsize=3,
                  label=method)
  left.set_xscale("log", base=2)
  left.set_yscale("symlog", linthresh=1e-3)  # matched barriers sit 2-3 decades below naive
  left.set_ylim(bottom=0)
  left.set(xlabel="width", ylabel="test-loss barrier (symlog, linear below 1e-3)",
           title="barrier vs width")
  left.legend(fontsize=7)
  widest = results[widths[-1]]["pairs"][0]
  for method, marker in zip(methods, "osD^vP*X"):
    right.plot(widest[method]["lam"], widest[method]["loss"], marker=marker, ms=3, label=method)
  right.set(xlabel="lambda ((1 - lambda) A + lambda B)", ylabel="test loss",
            title=f"width {widths[-1]}, first pair")
  right.legend(fontsize=7)
  fig.tight_layout()
  return fig


def pruning_figure(results: dict, title: str):
  """results = {"dense": {"accuracy"}, "methods": {method: [{"sparsity", "accuracy",
  "finetuned_accuracy"}]}} (experiments.pruning_study) -> test accuracy vs sparsity, a colour per
  method, solid before and dashed after fine-tuning with the masks kept; the dense accuracy
  dotted."""
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for (method, rows), marker in zip(results["methods"].items(), "osD^v"):
    s = [r["sparsity"] for r in rows]
    line, = ax.plot(s, [r["accuracy"] for r in rows], marker=marker, ms=4, label=method)
    ax.plot(s, [r["finetuned_accuracy"] for r in rows], marker=marker, ms=4, linestyle="--",
            color=line.get_color(), label=f"{method} + fine-tune")
  ax.axhline(results["dense"]["accuracy"], color="gray", linestyle=":", label="dense")
  ax.set(xlabel="sparsity (fraction of prunable weights / units removed)",
         ylabel="test accuracy", title=title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig
