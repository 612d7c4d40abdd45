r"""Linear mode connectivity across width, before and after permutation alignment.

  python -m experiments.weight_space --config=jaxlab/configs/mnist5k_mlp.py \
      --widths=64,128,256,512,1024,2048 --pairs=3 --steps=1000 --workdir=/tmp/weight_space

For every width it trains 2 x pairs seeds of the config (init and data order both from the seed;
the seeds of a width trained in one vmapped program, or one after the other for conv nets:
--step_chunk), then for each pair (A, B) measures the
test loss and accuracy at 25 points of the straight path (1 - l) A + l B: naive, after weight
matching, activation matching and the straight-through estimator (Ainsworth et al. 2023), and
weight matching + REPAIR (Jordan et al. 2023). The barrier is max_l [v(l) - ((1 - l) v(0) +
l v(1))] of the test loss (and of the test error). Writes weight_space.json (every curve) and
weight_space.png (barrier vs width per method, mean and range over the pairs), rewriting the JSON
after every width.
"""

import json
import os
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from experiments.step_chunk_flag import step_chunk
from experiments.width_configs import config_at
from jaxlab import data
from jaxlab.analysis import plots
from jaxlab.analysis.lr_sweep import stack_batches
from jaxlab.analysis.seed_runs import evaluator, train_seeds
from jaxlab.train import core, tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of
from jaxlab.weights import interpolation, landscape, matching, permutation

_CONFIG = config_flags.DEFINE_config_file("config", None, "a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the JSON and PNG go")
_WIDTHS = flags.DEFINE_list("widths", ["64", "256", "1024"], "model widths")
_PAIRS = flags.DEFINE_integer("pairs", 3, "seed pairs per width (2 x pairs trained models)")
_STEPS = flags.DEFINE_integer("steps", 1000, "training steps per model")
_POINTS = flags.DEFINE_integer("points", 25, "points on the interpolation path")
_METHODS = flags.DEFINE_list("methods", ["naive", "weight", "activation", "ste", "weight_repair"],
                             "alignments to measure")
_STE_STEPS = flags.DEFINE_integer("ste_steps", 100, "straight-through estimator steps")
_STATS_EXAMPLES = flags.DEFINE_integer("stats_examples", 1000, "train examples for activation "
                                       "matching and REPAIR's statistics")
_LANDSCAPE = flags.DEFINE_integer(
    "landscape_points", 0, "if > 0: a landscape_points^2 grid of the test loss around the widest "
    "width's model A along two filter-normalised random directions (Li et al. 2018), spanning "
    "-1..1 of each, saved as weight_space_landscape.png and in the JSON")
flags.mark_flags_as_required(["config", "workdir"])

METHODS = ("naive", "weight", "activation", "ste", "weight_repair")


def measure_pair(methods, model, task, analysis, evaluate, a, b, stats_x, ste_batches) -> dict:
  spec = analysis.spec
  aligned = {}
  if "weight" in methods or "weight_repair" in methods:
    aligned["weight"] = matching.weight_matching(spec, a, b)
  if "activation" in methods:
    aligned["activation"] = matching.activation_matching(analysis, a, b, stats_x)
  if "ste" in methods:
    def loss_fn(variables, batch):
      return core.loss_and_metrics(model, variables["params"], {}, batch, task)[0]
    aligned["ste"] = matching.ste_matching(spec, a, b, loss_fn, ste_batches)
  out = {}
  for method in methods:
    t0 = time.perf_counter()
    if method == "naive":
      curve = interpolation.path_curve(evaluate, a, b, _POINTS.value)
    elif method == "weight_repair":
      bw = permutation.apply_permutation(spec, aligned["weight"], b)
      lams = np.linspace(0, 1, _POINTS.value)
      layers = interpolation.unit_layers(model, a, stats_x)
      rows = [evaluate(interpolation.repair(model, a, bw, float(l), stats_x, layers=layers))
              for l in lams]
      curve = {"lam": lams, **{k: np.asarray([r[k] for r in rows]) for k in rows[0]}}
    else:
      curve = interpolation.path_curve(
          evaluate, a, permutation.apply_permutation(spec, aligned[method], b), _POINTS.value)
    out[method] = {
        "lam": curve["lam"].tolist(), "loss": curve["loss"].tolist(),
        "accuracy": curve["accuracy"].tolist(),
        "barrier_loss": interpolation.barrier(curve["loss"], curve["lam"]),
        "barrier_error": interpolation.barrier(1 - curve["accuracy"], curve["lam"]),
        "seconds": time.perf_counter() - t0}
  return out


def summary(pairs: list[dict]) -> dict:
  """Per method: mean, min and max of the loss barrier over the pairs, and a 95% t-interval."""
  out = {}
  for method in pairs[0]:
    v = np.asarray([p[method]["barrier_loss"] for p in pairs])
    half = _t95(len(v)) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    out[method] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                   "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": int(len(v))}
  return out


def _t95(n: int) -> float:
  """Two-sided 95% Student-t quantile for n - 1 degrees of freedom."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  return float(scipy.stats.t.ppf(0.975, n - 1))


def main(argv):
  del argv
  config = _CONFIG.value
  methods = [m for m in _METHODS.value]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
  spec_data = data.dataset_spec(config.data)
  task = tasks.get(spec_data.task)
  example = dummy_input(spec_data, config.data.get("seq_len", 0))
  whole = {"process_index": 0, "process_count": 1}
  eval_batches = list(data.eval_batches(config.data, batch_size=config.eval_batch_size, **whole))
  stats_x = task.inputs(stack_batches(data.make_train_iterator(
      config.data, batch_size=_STATS_EXAMPLES.value, seed=12345, **whole), 1))[0]
  ste_batches = [jax.tree.map(lambda x: x[i], stack_batches(data.make_train_iterator(
      config.data, batch_size=config.batch_size, seed=777, **whole), _STE_STEPS.value))
                 for i in range(_STE_STEPS.value)]
  seeds = list(range(2 * _PAIRS.value))
  results = {}
  for width in map(int, _WIDTHS.value):
    c = config_at(config, "sp", width, base_width=width)
    c.num_steps = _STEPS.value
    model = build_model(c, spec_data)
    tx = make_tx(c, model, param_info_of(model, example))
    batches = jax.tree.map(lambda *xs: np.stack(xs), *[
        stack_batches(data.make_train_iterator(c.data, batch_size=c.batch_size, seed=s, **whole),
                      _STEPS.value) for s in seeds])
    chunk = step_chunk(model, example)
    t0 = time.perf_counter()
    params = jax.block_until_ready(train_seeds(model, tx, task, seeds, batches, chunk=chunk))
    train_s = time.perf_counter() - t0
    del batches
    models_ = [{"params": jax.tree.map(lambda x, i=i: x[i], params)} for i in seeds]
    evaluate = evaluator(model, task, eval_batches)
    analysis = permutation.analyse(model.apply, models_[0], stats_x)
    pairs = [measure_pair(methods, model, task, analysis, evaluate, models_[2 * k],
                          models_[2 * k + 1], stats_x, ste_batches) for k in range(_PAIRS.value)]
    results[width] = {"pairs": pairs, "summary": summary(pairs), "train_seconds": train_s,
                      "step_chunk": chunk,
                      "endpoints": [evaluate(m) for m in models_],
                      "groups": dict(analysis.spec.groups)}
    print(f"width {width}: " + ", ".join(
        f"{m} {s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"
        for m, s in results[width]["summary"].items()) + f" (train {train_s:.0f} s)", flush=True)
    _write(results, config)
  plots.save_png(plots.barrier_figure(results), os.path.join(_WORKDIR.value, "weight_space.png"))
  if _LANDSCAPE.value:
    grid = np.linspace(-1.0, 1.0, _LANDSCAPE.value)
    batch = jax.tree.map(lambda *xs: np.concatenate(xs), *eval_batches)
    info = param_info_of(model, example)

    def loss_fn(p):
      sums = task.eval_sums(core.logits(model, p, {}, batch, task), batch)
      return sums["loss"] / sums["count"]

    d1, d2 = (landscape.filter_normalized_direction(jax.random.PRNGKey(k), models_[0]["params"],
                                                    info) for k in (1, 2))
    losses = np.asarray(landscape.slice_2d(loss_fn, models_[0]["params"], d1, d2, grid, grid))
    _write(results, config, landscape={"width": width, "alphas": grid.tolist(),
                                       "betas": grid.tolist(), "test_loss": losses.tolist()})
    plots.save_png(plots.landscape_contour_figure(grid, grid, losses,
                                                  title=f"test loss around A, width {width}"),
                   os.path.join(_WORKDIR.value, "weight_space_landscape.png"))


def _write(results, config, **extra):
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "weight_space.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"results": results, "steps": _STEPS.value, "pairs": _PAIRS.value,
               "config": config.to_dict(), **extra}, f, indent=1, default=str)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  app.run(main)
