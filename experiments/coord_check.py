r"""Coordinate check: per-layer mean |activation| vs width over the first training steps.

  python -m experiments.coord_check --config=jaxlab/configs/mnist5k_mlp.py \
      --widths=256,512,1024,2048 --base_width=256 --parametrizations=sp,mup --workdir=/tmp/cc_mlp
  python -m experiments.coord_check --config=jaxlab/configs/shakespeare_lm.py \
      --widths=64,128,256,512 --base_width=64 --workdir=/tmp/cc_lm

Trains each width on one fixed real batch with the config's optimizer at a constant learning
rate (--lr overrides it) and writes coord_check.json ({results: {parametrization: {width:
history}}, parametrizations: every field of each resolved parametrization, lr, optimizer}) and
coord_check.png to --workdir. The summary printed last is the wide/narrow ratio of each layer at
the last step.
"""

import json
import os

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags

from experiments.width_configs import config_at
from jaxlab import data, param
from jaxlab.analysis import coord_check, plots
from jaxlab.train import tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of

_CONFIG = config_flags.DEFINE_config_file("config", None, "a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the JSON and PNG go")
_WIDTHS = flags.DEFINE_list("widths", ["256", "512", "1024", "2048"], "model widths")
_BASE = flags.DEFINE_integer("base_width", 256, "base width of the width-aware parametrizations")
_PARAMS = flags.DEFINE_list("parametrizations", ["sp", "mup"], "jaxlab.param names")
_STEPS = flags.DEFINE_integer("steps", 3, "training steps (activations recorded before each)")
_LR = flags.DEFINE_float("lr", 0.0, "constant learning rate (0 = config.optim.learning_rate)")
_BATCH = flags.DEFINE_integer("batch_size", 0, "batch size (0 = config.batch_size)")
_ZERO_READOUT = flags.DEFINE_bool("zero_readout", False, "zero-initialised readout, for the "
                                   "parametrizations that take it (jaxlab.param.options)")
flags.mark_flags_as_required(["config", "workdir"])


def coord_config(config: ml_collections.ConfigDict, name: str, width: int) -> ml_collections.ConfigDict:
  c = config_at(config, name, width, base_width=_BASE.value, zero_readout=_ZERO_READOUT.value)
  c.optim.update(schedule="constant", warmup_steps=0, grad_clip=0.0)
  if _LR.value:
    c.optim.learning_rate = _LR.value
  return c


def main(argv):
  del argv
  config = _CONFIG.value
  spec = data.dataset_spec(config.data)
  batch = next(data.make_train_iterator(config.data, batch_size=_BATCH.value or config.batch_size,
                                        seed=config.seed))
  example = dummy_input(spec, config.data.get("seq_len", 0))
  results, described = {}, {}
  for name in _PARAMS.value:
    described[name] = {}

    def build(width, name=name):
      c = coord_config(config, name, width)
      model = build_model(c, spec)
      described[name][str(width)] = param.describe(model.ctx.parametrization)
      return model, make_tx(c, model, param_info_of(model, example))
    results[name] = coord_check(build, [int(w) for w in _WIDTHS.value], batch, tasks.get(spec.task),
                                _STEPS.value, seed=config.seed)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "coord_check.json"), "w") as f:
    json.dump({"results": {n: {str(w): h for w, h in r.items()} for n, r in results.items()},
               "parametrizations": described, "lr": config.optim.learning_rate if not _LR.value
               else _LR.value, "optimizer": config.optim.name}, f, indent=1)
  plots.coord_check_grid(results, os.path.join(_WORKDIR.value, "coord_check.png"))
  lo, hi = min(map(int, _WIDTHS.value)), max(map(int, _WIDTHS.value))
  for name, r in results.items():
    ratios = {k: round(r[hi][-1][k] / r[lo][-1][k], 3) for k in r[lo][-1]}
    print(f"{name}: mean|x| ratio width {hi}/{lo} at step {_STEPS.value}: {json.dumps(ratios)}")
  print(f"jax devices: {jax.device_count()}; wrote {_WORKDIR.value}/coord_check.{{json,png}}")


if __name__ == "__main__":
  app.run(main)
