r"""Depth study: one deep byte-level LM trained once per norm placement at the same budget, then
the per-layer story of each (jaxlab.analysis.depth_diagnostics).

  python -m experiments.depth_study --config=experiments/configs/shakespeare_lm.py \
      --depth=12 --config.model.d_model=128 --steps=600 --workdir=/tmp/depth_study

For every placement in --placements (jaxlab.depth.placement: pre, post, peri, mix, lns,
deepnorm, none) the same data, seed, optimizer and LR train the model; then on one held-out
batch it measures the validation loss, the variance of the residual stream after each block
(last/first ratio: Pre-LN's grows with depth, "The Curse of Depth"), the gradient norm of each
block's parameters (max/min spread), the angular distance between consecutive blocks' inputs
and the loss increase when each block is removed. Writes depth_study.json, depth_study.md (the
table) and depth_study.png (variance and gradient norm per layer, one curve per placement).
"""

import json
import os
import time

from absl import app, flags
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxlab import data  # noqa: E402
from jaxlab.analysis import depth_diagnostics as dd  # noqa: E402
from jaxlab.analysis.lr_sweep import batch_loss, scan_train, stack_batches  # noqa: E402
from jaxlab.depth import placement  # noqa: E402
from jaxlab.train import tasks  # noqa: E402
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "an LM config (shakespeare_lm.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where JSON, table and PNG go")
_PLACEMENTS = flags.DEFINE_list("placements", list(placement.PLACEMENTS), "norm placements")
_DEPTH = flags.DEFINE_integer("depth", 12, "number of transformer blocks")
_STEPS = flags.DEFINE_integer("steps", 600, "training steps per placement")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 32, "held-out windows for the diagnostics")
_WARMUP = flags.DEFINE_integer(
    "warmup_steps", None, "LR warmup steps for every placement (default: the config's "
    "optim.warmup_steps, at most steps // 10); Post-LN needs a longer one (Xiong et al. 2020)")
flags.mark_flags_as_required(["config", "workdir"])


def placement_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
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
  params, losses = jax.jit(lambda b: scan_train(model, tx, "lm", c.seed, b))(train)
  loss_fn = batch_loss(model, "lm")
  val_loss, grads = jax.value_and_grad(loss_fn)(params, evals)
  inputs = tasks.model_inputs(evals, "lm")
  var = dd.block_output_variance(model, params, inputs)
  norms = dd.per_layer_grad_norms(grads)
  removal = dd.layer_removal_loss_delta(
      model, params, evals, lambda logits, b: tasks.loss_and_metrics(logits, b, "lm")[0])
  to_list = lambda x: np.asarray(x, np.float64).tolist()  # noqa: E731
  return {"val_loss": float(val_loss), "train_loss": to_list(losses),
          "block_variance": to_list(var["variance"]),
          "variance_last_first": float(var["last_first_ratio"]),
          "grad_norms": to_list(norms["norms"]), "grad_norm_max_min": float(norms["max_min_ratio"]),
          "grad_norm_cv": float(norms["cv"]),
          "angular_distance": to_list(dd.angular_distance(model, params, inputs, 1)),
          "removal_loss_delta": to_list(removal["loss_delta"])}


def table(results: dict) -> str:
  rows = ["| placement | val loss | grad-norm max/min | grad-norm CV | variance last/first | "
          "least useful block (removal delta) |", "|---|---|---|---|---|---|"]
  for name, r in results.items():
    delta = np.asarray(r["removal_loss_delta"])
    rows.append(f"| {name} | {r['val_loss']:.4f} | {r['grad_norm_max_min']:.2f} | "
                f"{r['grad_norm_cv']:.2f} | {r['variance_last_first']:.2f} | "
                f"block_{int(np.argmin(delta))} ({delta.min():+.4f}) |")
  return "\n".join(rows) + "\n"


def plot(results: dict, path: str) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
  for name, r in results.items():
    layers = np.arange(1, len(r["block_variance"]) + 1)
    axes[0].plot(layers, r["block_variance"], marker="o", ms=3, label=name)
    axes[1].plot(layers, r["grad_norms"], marker="o", ms=3, label=name)
    axes[2].plot(layers, r["removal_loss_delta"], marker="o", ms=3, label=name)
  axes[0].set(yscale="log", xlabel="block", ylabel="residual-stream variance after block")
  axes[1].set(yscale="log", xlabel="block", ylabel="gradient norm of block params")
  axes[2].set(xlabel="block removed", ylabel="val loss increase")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  config = _CONFIG.value
  for name in _PLACEMENTS.value:  # bad flags fail before any data is read
    placement.check(name)
  warmup = placement_config(config, "pre").optim.warmup_steps
  spec = data.dataset_spec(config.data)
  train = stack_batches(data.make_train_iterator(config.data, batch_size=config.batch_size,
                                                 seed=config.seed), _STEPS.value)
  evals = next(data.eval_batches(config.data, batch_size=_EVAL_BATCH.value))
  evals = {k: v for k, v in evals.items() if k in ("inputs", "targets")}
  results = {}
  for name in _PLACEMENTS.value:
    t0 = time.perf_counter()
    results[name] = study_one(placement_config(config, name), spec, train, evals)
    r = results[name]
    print(f"{name}: val loss {r['val_loss']:.4f}, grad-norm max/min {r['grad_norm_max_min']:.2f}, "
          f"variance last/first {r['variance_last_first']:.2f} ({time.perf_counter() - t0:.0f} s)")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "depth_study.json"), "w") as f:
    json.dump({"depth": _DEPTH.value, "steps": _STEPS.value,
               "warmup_steps": warmup, "results": results,
               "config": config.to_dict()}, f, indent=1, default=str)
  with open(os.path.join(_WORKDIR.value, "depth_study.md"), "w") as f:
    f.write(table(results))
  plot(results, os.path.join(_WORKDIR.value, "depth_study.png"))
  print(table(results))


if __name__ == "__main__":
  app.run(main)
