"""The optimal learning rate per model size by a parabola fit in log2 LR, with a seed bootstrap.

A grid argmin moves in whole grid steps and hides how sure it is. Here the optimum of each size is
the vertex of a least-squares parabola in log2 LR through the grid points around the argmin of the
seed-mean loss, its 95% interval is the percentile interval over bootstrap resamples of the seeds
(Efron & Tibshirani 1993, ch. 13), and the drift of the optimum per doubling of the size is the
least-squares slope of the fitted optimum vs log2(size), with its interval from the same replicates.
A transferring parametrization has a drift interval around 0; an optimum on the grid's edge is
flagged (`bracketed` False) instead of being read as an optimum. Pure numpy (no jax).

Input: lr_transfer.json from experiments/lr_transfer.py, results[param][size] = {"log2_lr" [K],
"eval_loss" [K][S] (non-finite for a diverged run)}.
"""

import json
import math
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from jaxlab.errors import UserError


class Optimum(NamedTuple):
  """log2_lr: fitted vertex (the grid argmin when not bracketed); loss_at_min: the parabola there
  (the grid loss when not bracketed); bracketed: the vertex is an interior minimum of the fit."""
  log2_lr: float
  loss_at_min: float
  bracketed: bool


def seed_mean(eval_loss: np.ndarray) -> np.ndarray:
  """[K, S] losses -> [K] means over seeds; a diverged (non-finite) seed makes its LR's mean inf
  (as jaxlab.analysis.lr_sweep.mean_over_seeds)."""
  loss = np.asarray(eval_loss, float)
  return np.where(np.isfinite(loss), loss, np.inf).mean(axis=-1)


def fit_optimum(log2_lrs: Sequence[float], mean_loss: Sequence[float], points: int = 5) -> Optimum:
  """Vertex of the least-squares parabola loss = a x^2 + b x + c (x = log2 LR) through the
  `points` finite grid points nearest the argmin (a window of the finite points sorted by x,
  truncated at the edges, at least 3). Not bracketed when the argmin is the first/last finite
  point, a <= 0, or the vertex lies outside the fitted points; then the argmin is returned."""
  x, y = np.asarray(log2_lrs, float), np.asarray(mean_loss, float)
  keep = np.isfinite(y) & np.isfinite(x)
  x, y = x[keep], y[keep]
  if x.size == 0:
    return Optimum(math.nan, math.nan, False)
  order = np.argsort(x)
  x, y = x[order], y[order]
  i = int(np.argmin(y))
  argmin = Optimum(float(x[i]), float(y[i]), False)
  if x.size < 3 or i in (0, x.size - 1):
    return argmin
  below = (max(points, 3) - 1) // 2
  lo, hi = max(i - below, 0), min(i + max(points, 3) - 1 - below, x.size - 1) + 1
  xs, ys = x[lo:hi] - x[i], y[lo:hi]  # centred on the argmin for conditioning
  (a, b, c), *_ = np.linalg.lstsq(np.stack([xs**2, xs, np.ones_like(xs)], 1), ys, rcond=None)
  if not a > 0:
    return argmin
  vertex = -b / (2 * a)
  if not xs[0] <= vertex <= xs[-1]:
    return argmin
  return Optimum(float(x[i] + vertex), float(c - b * b / (4 * a)), True)


def _percentiles(values: np.ndarray) -> list[float]:
  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return [math.nan, math.nan]
  return [float(v) for v in np.percentile(finite, [2.5, 97.5])]


def _slopes(log2_sizes: np.ndarray, optima: np.ndarray) -> np.ndarray:
  """Least-squares slopes of optima [..., N] vs log2_sizes [N] (NaN where an optimum is NaN)."""
  dx = log2_sizes - log2_sizes.mean()
  return ((optima - optima.mean(-1, keepdims=True)) * dx).sum(-1) / (dx * dx).sum()


def bootstrap(result_by_size: dict, n_boot: int = 2000, seed: int = 0,
              sizes: Iterable | None = None, points: int = 5) -> dict:
  """Per size: the fitted optimum on all seeds ('log2_lr', 'loss_at_min', 'bracketed'), the 95%
  percentile interval over `n_boot` resamples of the seeds with replacement (independent per
  size) ('interval'), the fraction of bracketed replicates, the best seed-mean grid loss and its
  log2 LR; and 'drift': the least-squares slope of the optimum vs log2(size) ('per_doubling',
  'interval' from the same replicates; None for fewer than 2 sizes). With one seed every
  replicate equals the point fit (a zero-width interval)."""
  sizes = sorted(result_by_size if sizes is None else sizes, key=float)
  rng = np.random.default_rng(seed)
  per_size, replicates = {}, []
  for size in sizes:
    r = result_by_size[size]
    log2_lr = np.asarray(r["log2_lr"], float)
    loss = np.asarray(r["eval_loss"], float)
    loss = np.where(np.isfinite(loss), loss, np.inf)
    mean = seed_mean(loss)
    point = fit_optimum(log2_lr, mean, points)
    resampled = loss[:, rng.integers(0, loss.shape[1], (n_boot, loss.shape[1]))].mean(-1)
    fits = [fit_optimum(log2_lr, resampled[:, b], points) for b in range(n_boot)]
    optima = np.array([f.log2_lr for f in fits])
    best = int(np.argmin(mean))
    per_size[str(size)] = {
        "log2_lr": point.log2_lr, "interval": _percentiles(optima),
        "loss_at_min": point.loss_at_min, "bracketed": point.bracketed,
        "bracketed_fraction": float(np.mean([f.bracketed for f in fits])),
        "best_mean_loss": float(mean[best]), "best_grid_log2_lr": float(log2_lr[best]),
        "grid": [float(log2_lr.min()), float(log2_lr.max())], "seeds": int(loss.shape[1])}
    replicates.append(optima)
  drift = None
  if len(sizes) >= 2:
    log2_sizes = np.log2(np.array(sizes, float))
    point = np.array([per_size[str(s)]["log2_lr"] for s in sizes])
    drift = {"per_doubling": float(_slopes(log2_sizes, point)),
             "interval": _percentiles(_slopes(log2_sizes, np.stack(replicates, -1)))}
  return {"sizes": per_size, "drift": drift, "n_boot": n_boot}


def drifts_disjoint(a: dict, b: dict) -> bool:
  """Whether two drift intervals (bootstrap()['drift'] or a report's parametrization entry) do
  not overlap -- the two parametrizations' drifts differ at the bootstrap's 95% level."""
  a, b = a.get("drift", a), b.get("drift", b)
  if a is None or b is None:
    return False
  (a_lo, a_hi), (b_lo, b_hi) = a["interval"], b["interval"]
  return bool(a_hi < b_lo or b_hi < a_lo)


def merge_results(docs: Sequence[tuple[str, dict]], flag: str = "--results") -> dict:
  """[(source name, lr_transfer.json dict)] -> {"axis", "steps", "results": {param: {size:
  {"log2_lr", "eval_loss"}}}, "sources": {param: [names]}}. A parametrization in several sources
  has their sizes merged; a size in several sources has its seed columns joined on the common
  LR grid points (separate seeds). A UserError naming `flag` and the source for a document
  without results, a different axis, or a parametrization run for a different number of steps."""
  axis, merged, sources, steps = None, {}, {}, {}
  for name, doc in docs:
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
      raise UserError(f"{flag}: {name} has no 'results' dict; valid: an lr_transfer.json "
                      "written by experiments/lr_transfer.py")
    this_axis = doc.get("axis", "width")
    if axis not in (None, this_axis):
      raise UserError(f"{flag}: {name} sweeps {this_axis}, an earlier file {axis}; valid: files "
                      "of one axis")
    axis = this_axis
    for param, by_size in doc["results"].items():
      if steps.setdefault(param, doc.get("steps")) != doc.get("steps"):
        raise UserError(f"{flag}: {name} trains {param} for {doc.get('steps')} steps, an earlier "
                        f"file for {steps[param]}; valid: files of one run length")
      sources.setdefault(param, []).append(name)
      into = merged.setdefault(param, {})
      for size, r in by_size.items():
        try:
          new = {"log2_lr": [float(v) for v in r["log2_lr"]],
                 "eval_loss": np.asarray(r["eval_loss"], float).reshape(len(r["log2_lr"]), -1)}
        except (KeyError, TypeError, ValueError) as e:
          raise UserError(f"{flag}: {name} results[{param}][{size}] lacks a log2_lr list and a "
                          f"[LR][seed] eval_loss ({e!r})") from None
        if str(size) in into:
          new = _join_seeds(into[str(size)], new, f"{flag}: {name} results[{param}][{size}]")
        into[str(size)] = new
  return {"axis": axis or "width", "steps": steps, "results": merged, "sources": sources}


def _join_seeds(old: dict, new: dict, where: str) -> dict:
  """The seed columns of two sweeps of one size side by side, on their common LR grid points."""
  common = sorted(set(old["log2_lr"]) & set(new["log2_lr"]))
  if len(common) < 3:
    raise UserError(f"{where}: shares {len(common)} LR grid points with an earlier file; valid: "
                    "at least 3 in common to join their seeds")
  rows = [r["eval_loss"][[r["log2_lr"].index(v) for v in common]] for r in (old, new)]
  return {"log2_lr": common, "eval_loss": np.concatenate(rows, axis=1)}


def read_results(paths: Sequence[str], flag: str = "--results") -> dict:
  """merge_results of the lr_transfer.json files at `paths`; a UserError naming `flag` and the
  path for a missing or unreadable file."""
  if not paths:
    raise UserError(f"{flag} is empty; valid: comma-separated lr_transfer.json paths")
  docs = []
  for path in paths:
    try:
      with open(path) as f:
        docs.append((path, json.load(f)))
    except OSError as e:
      raise UserError(f"{flag}: cannot read {path} ({e.strerror}); valid: an lr_transfer.json "
                      "path") from None
    except json.JSONDecodeError as e:
      raise UserError(f"{flag}: {path} is not JSON ({e.msg}, line {e.lineno})") from None
  return merge_results(docs, flag)


def fit_report(merged: dict, n_boot: int = 2000, seed: int = 0, points: int = 5) -> dict:
  """merge_results/read_results output -> {"axis", "n_boot", "points", "parametrizations":
  {param: bootstrap(...) + "sources", "steps"}}; each parametrization gets its own seed stream."""
  params = {}
  for k, (param, by_size) in enumerate(merged["results"].items()):
    params[param] = {**bootstrap(by_size, n_boot, seed + k, points=points),
                     "sources": merged["sources"][param], "steps": merged["steps"][param]}
  return {"axis": merged["axis"], "n_boot": n_boot, "points": points, "parametrizations": params}


def _fmt(v: float, digits: int = 2) -> str:
  return "nan" if not np.isfinite(v) else f"{v:+.{digits}f}"


def markdown(report: dict) -> str:
  """A report as markdown: per parametrization a table (size, fitted optimum log2 LR [95%],
  best seed-mean loss, bracketed), then the drift per doubling [95%] per parametrization."""
  axis, lines = report["axis"], []
  for param, r in report["parametrizations"].items():
    seeds = sorted({s["seeds"] for s in r["sizes"].values()})
    note = "; one seed: zero-width intervals" if seeds == [1] else ""
    lines += [f"**{param}** ({'/'.join(map(str, seeds))} seed(s), {report['n_boot']} bootstrap "
              f"resamples{note})", "",
              f"| {axis} | LR grid (log2) | optimum log2 LR [95%] | grid argmin | best mean loss "
              "| bracketed (replicates) |", "|---|---|---|---|---|---|"]
    for size, s in r["sizes"].items():
      lo, hi = s["interval"]
      lines.append(f"| {size} | {s['grid'][0]:g}..{s['grid'][1]:g} | {_fmt(s['log2_lr'])} "
                   f"[{_fmt(lo)}, {_fmt(hi)}] | {s['best_grid_log2_lr']:g} | "
                   f"{s['best_mean_loss']:.4f} | {'yes' if s['bracketed'] else 'NO (edge)'} "
                   f"({100 * s['bracketed_fraction']:.0f}%) |")
    lines.append("")
  lines += [f"| parametrization | drift of optimum log2 LR per {axis} doubling [95%] |",
            "|---|---|"]
  for param, r in report["parametrizations"].items():
    d = r["drift"]
    text = "n/a (one size)" if d is None else (
        f"{_fmt(d['per_doubling'], 3)} [{_fmt(d['interval'][0], 3)}, {_fmt(d['interval'][1], 3)}]")
    lines.append(f"| {param} | {text} |")
  names = [p for p, r in report["parametrizations"].items() if r["drift"] is not None]
  pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
  if pairs:
    lines.append("")
    for a, b in pairs:
      verdict = "disjoint" if drifts_disjoint(report["parametrizations"][a],
                                              report["parametrizations"][b]) else "overlap"
      lines.append(f"drift intervals {a} vs {b}: {verdict}")
  return "\n".join(lines)
