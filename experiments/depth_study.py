r"""Depth study: one deep byte-level LM trained once per norm placement at the same budget, then
the per-layer story of each (jaxlab.analysis.depth_diagnostics).

  python -m experiments.depth_study --config=jaxlab/configs/shakespeare_lm.py \
      --depth=12 --config.model.d_model=128 --steps=600 --workdir=/tmp/depth_study

For every placement in --placements (jaxlab.depth.placement: pre, post, peri, mix, lns,
deepnorm, none) the same data, seed, optimizer and LR train the model; then on one held-out
batch it measures the validation loss, the variance of the residual stream after each block
(last/first ratio: Pre-LN's grows with depth, "The Curse of Depth"), the gradient norm of each
block's parameters (max/min spread), the angular distance between consecutive blocks' inputs
and the loss increase when each block is removed. Writes depth_study.json, depth_study.md (the
table) and depth_study.png (variance and gradient norm per layer, one curve per placement).

--learning_rates=3e-3,1e-3,3e-4 trains every placement at each LR: one table row per placement
and LR, a val-loss-by-LR table with each placement's best LR, depth_study_lr.png (val loss vs LR)
and depth_study.png at each placement's best LR. Post-LN, for one, only trains below the
Pre-LN-tuned default (Xiong et al. 2020).
"""

import json
import os
import time

from absl import app, flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from jaxlab import data, param
from jaxlab.analysis import depth_diagnostics as dd, plots
from jaxlab.analysis.lr_sweep import scan_train, stack_batches
from jaxlab.depth import placement
from jaxlab.train import core, tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of

_CONFIG = config_flags.DEFINE_config_file("config", None, "an LM config (shakespeare_lm.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where JSON, table and PNG go")
_PLACEMENTS = flags.DEFINE_list("placements", list(placement.PLACEMENTS), "norm placements")
_DEPTH = flags.DEFINE_integer("depth", 12, "number of transformer blocks")
_STEPS = flags.DEFINE_integer("steps", 600, "training steps per placement")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 32, "held-out windows for the diagnostics")
_WARMUP = flags.DEFINE_integer(
    "warmup_steps", None, "LR warmup steps for every placement (default: the config's "
    "optim.warmup_steps, at most steps // 10); Post-LN needs a longer one (Xiong et al. 2020)")
_LRS = flags.DEFINE_list(
    "learning_rates", None, "peak LRs to train every placement at (default: the config's "
    "optim.learning_rate); with several, one row per placement and LR plus a best-LR table")
flags.mark_flags_as_required(["config", "workdir"])


def learning_rates(config: ml_collections.ConfigDict) -> list[float]:
  """--learning_rates as positive floats (the config's LR when the flag is not given)."""
  if _LRS.value is None:
    return [float(config.optim.learning_rate)]
  try:
    lrs = [float(v) for v in _LRS.value]
  except ValueError:
    lrs = []
  if not lrs or not all(np.isfinite(lr) and lr > 0 for lr in lrs):
    raise ValueError(f"--learning_rates={','.join(_LRS.value)} must be a comma-separated list of "
                     "positive numbers, e.g. 3e-3,1e-3,3e-4")
  return lrs


def placement_config(config: ml_collections.ConfigDict, name: str,
                     learning_rate: float) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.optim.learning_rate = learning_rate
  if c.model.name != "transformer":
    raise ValueError(f"the depth study trains the Transformer LM; config.model.name="
                     f"{c.model.name!r}")
  c.model.norm_placement, c.model.num_layers = name, _DEPTH.value
  c.num_steps = _STEPS.value
  if _WARMUP.value is None:
    c.optim.warmup_steps = min(c.optim.warmup_steps, _STEPS.value // 10)
  elif not 0 <= _WARMUP.value <= _STEPS.value:
    raise ValueError(f"--warmup_steps={_WARMUP.value} must lie in [0, --steps={_STEPS.value}]")
  else:
    c.optim.warmup_steps = _WARMUP.value
  return c


def study_one(c, spec, train, evals) -> dict:
  """Train one placement (lax.scan over the stacked batches) and measure it."""
  model = build_model(c, spec)
  example = dummy_input(spec, c.data.seq_len)
  tx = make_tx(c, model, param_info_of(model, example))
  params, extra, losses = jax.jit(lambda b: scan_train(model, tx, tasks.LM, c.seed, b))(train)
  val_loss, _, grads, _ = core.loss_and_grads(model, params, extra, evals, tasks.LM)
  inputs = tasks.LM.inputs(evals)
  var = dd.block_output_variance(model, params, inputs)
  norms = dd.per_layer_grad_norms(grads)
  removal = dd.layer_removal_loss_delta(model, params, evals, tasks.LM.loss)
  to_list = lambda x: np.asarray(x, np.float64).tolist()  # noqa: E731
  return {"placement": c.model.norm_placement, "learning_rate": float(c.optim.learning_rate),
          "val_loss": float(val_loss), "train_loss": to_list(losses),
          "block_variance": to_list(var["variance"]),
          "variance_last_first": float(var["last_first_ratio"]),
          "grad_norms": to_list(norms["norms"]), "grad_norm_max_min": float(norms["max_min_ratio"]),
          "grad_norm_cv": float(norms["cv"]),
          "angular_distance": to_list(dd.angular_distance(model, params, inputs, 1)),
          "removal_loss_delta": to_list(removal["loss_delta"])}


def ratio(x: float) -> str:
  return f"{x:.2f}" if abs(x) < 1e4 else f"{x:.1e}"  # a stalled run's ratios reach 1e23


def table(results: dict) -> str:
  rows = ["| placement | LR | val loss | grad-norm max/min | grad-norm CV | variance last/first | "
          "least useful block (removal delta) |", "|---|---|---|---|---|---|---|"]
  for r in results.values():
    delta = np.asarray(r["removal_loss_delta"])
    rows.append(f"| {r['placement']} | {r['learning_rate']:g} | {r['val_loss']:.4f} | "
                f"{ratio(r['grad_norm_max_min'])} | "
                f"{r['grad_norm_cv']:.2f} | {ratio(r['variance_last_first'])} | "
                f"block_{int(np.argmin(delta))} ({delta.min():+.4f}) |")
  return "\n".join(rows) + "\n"


def best_runs(results: dict) -> dict:
  """{placement: the key of its run with the lowest val loss} (non-finite losses lose)."""
  best = {}
  for key, r in results.items():
    loss = r["val_loss"] if np.isfinite(r["val_loss"]) else np.inf
    name = r["placement"]
    if name not in best or loss < best[name][1]:
      best[name] = (key, loss)
  return {name: key for name, (key, _) in best.items()}


def lr_table(results: dict) -> str:
  """Val loss of every placement at every LR, and the best LR of each."""
  lrs = sorted({r["learning_rate"] for r in results.values()}, reverse=True)
  rows = ["| placement | " + " | ".join(f"val loss @ {lr:g}" for lr in lrs) + " | best LR |",
          "|---|" + "---|" * (len(lrs) + 1)]
  for name, key in best_runs(results).items():
    by_lr = {r["learning_rate"]: r["val_loss"] for r in results.values()
             if r["placement"] == name}
    cells = [f"{by_lr[lr]:.4f}" if lr in by_lr else "-" for lr in lrs]
    rows.append(f"| {name} | " + " | ".join(cells) + f" | {results[key]['learning_rate']:g} |")
  return "\n".join(rows) + "\n"


def main(argv):
  del argv
  config = _CONFIG.value
  for name in _PLACEMENTS.value:  # bad flags fail before any data is read
    placement.check(name)
  lrs = learning_rates(config)
  warmup = placement_config(config, "pre", lrs[0]).optim.warmup_steps
  spec = data.dataset_spec(config.data)
  train = stack_batches(data.make_train_iterator(config.data, batch_size=config.batch_size,
                                                 seed=config.seed), _STEPS.value)
  evals = next(data.eval_batches(config.data, batch_size=_EVAL_BATCH.value))
  evals = {k: v for k, v in evals.items() if k in ("inputs", "targets")}
  results = {}
  for name in _PLACEMENTS.value:
    for lr in lrs:
      key = name if len(lrs) == 1 else f"{name}@{lr:g}"
      t0 = time.perf_counter()
      r = results[key] = study_one(placement_config(config, name, lr), spec, train, evals)
      print(f"{key}: val loss {r['val_loss']:.4f}, grad-norm max/min "
            f"{r['grad_norm_max_min']:.2f}, variance last/first {r['variance_last_first']:.2f} "
            f"({time.perf_counter() - t0:.0f} s)", flush=True)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "depth_study.json"), "w") as f:
    json.dump({"depth": _DEPTH.value, "steps": _STEPS.value, "learning_rates": lrs,
               "warmup_steps": warmup, "results": results, "best_runs": best_runs(results),
               "parametrization": param.describe(param.get(**config.param)),
               "config": config.to_dict()}, f, indent=1, default=str)
  md = table(results) + ("\n" + lr_table(results) if len(lrs) > 1 else "")
  with open(os.path.join(_WORKDIR.value, "depth_study.md"), "w") as f:
    f.write(md)
  # the per-layer story of each placement at its best LR (the only LR without a sweep)
  plots.save_png(plots.depth_profile_figure({key: results[key] for key in best_runs(results).values()}),
                 os.path.join(_WORKDIR.value, "depth_study.png"))
  if len(lrs) > 1:
    plots.save_png(plots.depth_lr_figure(results), os.path.join(_WORKDIR.value, "depth_study_lr.png"))
  print(md)


if __name__ == "__main__":
  app.run(main)
