r"""Learning-rate transfer across width or depth: a sizes x learning-rates grid, every LR (and
seed) of a size trained in one compiled program (jaxlab.analysis.lr_sweep: vmap over LR and
seed; the LR axis sharded over the devices when there are several, and the host CPU split into
one device per core by default: --cpu_devices). --schedule=auto (jaxlab.analysis.sweep_schedule)
runs the first two chunks of LRs (one LR per device) alone and the rest chunk by chunk or
vmapped, whichever it predicts to be faster.

  python -m experiments.lr_transfer --config=jaxlab/configs/mnist5k_mlp.py \
      --widths=128,256,512,1024 --base_width=128 --log2_lrs=-14,-3 --steps=300 --workdir=/tmp/lrt
  python -m experiments.lr_transfer --config=jaxlab/configs/shakespeare_lm.py \
      --depths=2,4,8,16 --base_depth=2 --base_width=128 --config.model.d_model=128 \
      --parametrizations=mup,depth_mup --workdir=/tmp/lrt_depth

With --depths the model keeps the config's width and the sweep runs over depth instead.

Each run uses the config's optimizer and schedule shape with the peak LR swept over powers of
two; all runs of a width see the same batches. Writes lr_transfer.json (final eval loss per
width, LR, seed; argmin LR per width; rewritten after every size, so a stopped sweep keeps the
sizes it finished) and lr_transfer.png (eval loss vs log2 LR, one curve per
size, one panel per parametrization), and prints the vmapped-vs-sequential speed-up measured on
the first size.

Many hosts: run the same command on every process (experiments.launch_local on one machine,
or the cluster's own launcher with --coordinator_address/--num_processes/--process_id); the LR
axis is then split over every process's devices, every process reads the same batches, and
process 0 writes the outputs.
"""

import json
import os
import time

from absl import app, flags
import jax
import ml_collections
import numpy as np
import optax
from ml_collections import config_flags

from experiments import cpu_devices_flag
from experiments.width_configs import config_at, config_at_depth
from jaxlab import data, param
from jaxlab.analysis import plots, sweep_schedule
from jaxlab.analysis.lr_sweep import lr_mesh, make_sweep, mean_over_seeds, stack_batches
from jaxlab.sharding import distributed
from jaxlab.train import tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of

_CONFIG = config_flags.DEFINE_config_file("config", None, "a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the JSON and PNG go")
_WIDTHS = flags.DEFINE_list("widths", ["128", "256", "512", "1024"], "model widths")
_DEPTHS = flags.DEFINE_list("depths", [], "model depths (residual blocks); if set, sweep depth "
                            "at the config's width instead of width")
_BASE_DEPTH = flags.DEFINE_integer("base_depth", 0, "base depth of depth-aware parametrizations")
_PARAMS = flags.DEFINE_list("parametrizations", ["sp", "mup"], "jaxlab.param names")
_LRS = flags.DEFINE_list("log2_lrs", ["-14", "-3"], "first,last log2 peak LR (step 1) at the "
                         "first size")
_SHIFT = flags.DEFINE_float("log2_lr_shift", 0.0, "move the LR grid by this many log2 steps per "
                            "doubling of the size (rounded to whole steps), e.g. -1 for SP + Adam "
                            "across width, so every size's grid can bracket its optimum")
_SEEDS = flags.DEFINE_integer("seeds", 1, "seeds per (width, LR), a second vmapped axis")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "init seeds are first_seed ... first_seed + "
                                   "seeds - 1 (the data order follows config.seed)")
_STEPS = flags.DEFINE_integer("steps", 300, "training steps per run")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 0,
                                   "examples in the final eval batch (0 = config.eval_batch_size)")
_SCHEDULE = flags.DEFINE_enum(
    "schedule", "auto", list(sweep_schedule.SCHEDULES), "how a size's LRs run "
    "(jaxlab.analysis.sweep_schedule): all vmapped in one program (the LR axis split over the "
    "devices), one chunk after the other (a chunk: one LR per device), or auto (two chunks, then "
    "the rest whichever way is predicted faster; vmap in a multi-process job)")
_TIME = flags.DEFINE_bool("time_sequential", True, "also time the first width's LRs one by one")
_BASE = flags.DEFINE_integer("base_width", 128, "base width of the width-aware parametrizations")
_ZERO_READOUT = flags.DEFINE_bool("zero_readout", False, "zero-initialised readout, for the "
                                   "parametrizations that take it (jaxlab.param.options)")
flags.mark_flags_as_required(["config", "workdir"])


def sweep_config(config, name, size) -> ml_collections.ConfigDict:
  if _DEPTHS.value:
    c = config_at_depth(config, name, size, base_width=_BASE.value, base_depth=_BASE_DEPTH.value,
                        zero_readout=_ZERO_READOUT.value)
  else:
    c = config_at(config, name, size, base_width=_BASE.value, zero_readout=_ZERO_READOUT.value)
  c.optim.learning_rate = 1.0  # the swept LR multiplies the config's schedule shape
  c.num_steps = _STEPS.value
  c.optim.warmup_steps = min(c.optim.warmup_steps, _STEPS.value // 10)
  return c


def write_json(axis, results, timing, seeds, config) -> None:
  """lr_transfer.json with every size finished so far (replaced atomically)."""
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = os.path.join(_WORKDIR.value, "lr_transfer.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"axis": axis, "results": results, "timing": timing, "steps": _STEPS.value,
               "seeds": seeds.tolist(), "config": config.to_dict()}, f, indent=1, default=str)
  os.replace(path + ".tmp", path)


def main(argv):
  del argv
  cpu_devices_flag.apply()
  distributed.initialize_from_flags()
  chief = jax.process_index() == 0
  config = _CONFIG.value
  spec = data.dataset_spec(config.data)
  task = tasks.get(spec.task)
  example = dummy_input(spec, config.data.get("seq_len", 0))
  whole = {"process_index": 0, "process_count": 1}  # batches are replicated: every host reads all
  train = stack_batches(data.make_train_iterator(config.data, batch_size=config.batch_size,
                                                 seed=config.seed, **whole), _STEPS.value)
  evals = next(data.eval_batches(config.data, **whole,
                                 batch_size=_EVAL_BATCH.value or config.eval_batch_size))
  lo0, hi0 = map(int, _LRS.value)
  if _FIRST_SEED.value < 0 or _SEEDS.value < 1:
    raise ValueError(f"--first_seed must be >= 0 and --seeds >= 1 (got {_FIRST_SEED.value}, "
                     f"{_SEEDS.value})")
  seeds = np.arange(_FIRST_SEED.value, _FIRST_SEED.value + _SEEDS.value, dtype=np.uint32)
  axis = "depth" if _DEPTHS.value else "width"
  sizes = list(map(int, _DEPTHS.value or _WIDTHS.value))
  mesh = lr_mesh(hi0 - lo0 + 1)
  results, timing = {}, {}
  for name in _PARAMS.value:
    results[name] = {}
    for width in sizes:
      offset = int(round(_SHIFT.value * np.log2(width / sizes[0])))
      lo, hi = lo0 + offset, hi0 + offset
      lrs = np.array([2.0**k for k in range(lo, hi + 1)], np.float32)
      c = sweep_config(config, name, width)
      model = build_model(c, spec)
      unit_tx = make_tx(c, model, param_info_of(model, example))
      tx_fn = lambda lr, t=unit_tx: optax.chain(t, optax.scale(lr))
      t0 = time.perf_counter()
      out = sweep_schedule.run_sweep(model, tx_fn, task, lrs, seeds, train, evals,
                                     schedule=_SCHEDULE.value, mesh=mesh)
      final, schedule = out["eval_loss"], out["schedule"]
      elapsed = time.perf_counter() - t0
      mean = mean_over_seeds(final)
      results[name][width] = {"log2_lr": list(range(lo, hi + 1)), "eval_loss": final.tolist(),
                              "best_log2_lr": lo + int(np.argmin(mean)), "seconds": elapsed,
                              "schedule": schedule,
                              "param": param.describe(model.ctx.parametrization)}
      if chief:
        print(f"{name} {axis} {width}: best log2 LR {results[name][width]['best_log2_lr']}, "
              f"eval loss {mean.min():.4f} ({elapsed:.0f} s incl. compile, {schedule})")
      if _TIME.value and not timing:
        run = make_sweep(model, tx_fn, task, mesh=mesh)
        jax.block_until_ready(run(lrs, seeds, train, evals))  # compile the K-LR program
        t0 = time.perf_counter()
        jax.block_until_ready(run(lrs, seeds, train, evals))
        vmapped = time.perf_counter() - t0
        one = make_sweep(model, tx_fn, task)
        jax.block_until_ready(one(lrs[:1], seeds, train, evals))  # compile the 1-LR program
        t0 = time.perf_counter()
        for i in range(len(lrs)):
          jax.block_until_ready(one(lrs[i:i + 1], seeds, train, evals))
        sequential = time.perf_counter() - t0
        timing = {axis: width, "num_lrs": len(lrs), "vmapped_s": vmapped,
                  "sequential_s": sequential, "speedup": sequential / vmapped}
        if chief:
          print(f"vmapped {len(lrs)} LRs: {vmapped:.1f} s; one by one: {sequential:.1f} s; "
                f"speed-up {sequential / vmapped:.2f}x ({axis} {width}, compile excluded)")
      if chief:  # after every size: a stop loses one
        write_json(axis, results, timing, seeds, config)
  if chief:
    plots.save_png(plots.lr_transfer_figure(results, axis), os.path.join(_WORKDIR.value, "lr_transfer.png"))


if __name__ == "__main__":
  app.run(main)
