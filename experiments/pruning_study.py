r"""Test accuracy vs sparsity for magnitude and structured pruning, with and without fine-tuning.

  python -m experiments.pruning_study --config=jaxlab/configs/mnist5k_mlp.py --steps=1000 \
      --finetune_steps=200 --sparsities=0,0.5,0.7,0.8,0.9,0.95 --workdir=/tmp/pruning_mlp

Trains the config once (seed 0, `--steps`), then for every method and sparsity prunes the trained
weights (jaxlab.weights.pruning: global or layerwise magnitude over the weight matrices / conv
kernels, or structured: whole neurons of an MLP or channels of a conv net by the L2 norm of
their incoming weights, their bias and following norm included) and measures the test accuracy,
before and after `--finetune_steps` steps of the config's optimizer (same schedule shape, peak LR
x `--finetune_lr_scale`) with the masks kept by `keep_masked`. The fraction of all parameters
pruned is recorded too. Writes pruning_study.json and pruning_study.png.
"""

import json
import os
import time

from absl import app, flags
import jax
import optax
from ml_collections import config_flags

from experiments.step_chunk_flag import step_chunk
from jaxlab import data
from jaxlab.analysis import plots
from jaxlab.analysis.lr_sweep import stack_batches
from jaxlab.analysis.seed_runs import evaluator
from jaxlab.train import core, step_loops, tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of
from jaxlab.weights import pruning

_CONFIG = config_flags.DEFINE_config_file("config", None, "a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the JSON and PNG go")
_STEPS = flags.DEFINE_integer("steps", 1000, "training steps of the dense model")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 200, "fine-tuning steps after pruning")
_FT_LR = flags.DEFINE_float("finetune_lr_scale", 0.1, "fine-tuning peak LR / the config's")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0", "0.5", "0.7", "0.8", "0.9", "0.95"],
                                "fractions of the prunable weights (or units) removed")
_METHODS = flags.DEFINE_list("methods", ["magnitude_global", "magnitude_layerwise",
                                         "structured"], "pruning methods")
flags.mark_flags_as_required(["config", "workdir"])

CONV_MODELS = ("resnet", "convnext")


def masks_for(method: str, params, info, sparsity: float, model_name: str):
  if method == "magnitude_global":
    return pruning.magnitude_masks(params, info, sparsity, scope="global")
  if method == "magnitude_layerwise":
    return pruning.magnitude_masks(params, info, sparsity, scope="layerwise")
  if method == "structured":
    kind = "channels" if model_name in CONV_MODELS else "neurons"
    return pruning.structured_masks(params, info, sparsity, kind=kind)
  raise app.UsageError(f"--methods: unknown {method!r}; valid: magnitude_global, "
                       "magnitude_layerwise, structured")


def train(model, task, tx, params, batches, chunk: int):
  """params after one step of `tx` per batch of [T, ...] (jaxlab.train.step_loops)."""
  step = step_loops.optimizer_step(model, tx, task)
  carry = (params, tx.init(params), {})
  if chunk:
    return step_loops.chunked_steps(step, carry, batches, chunk)[0][0]
  return jax.jit(lambda c, b: step_loops.scan_steps(step, c, b)[0][0])(carry, batches)


def finetune(model, task, config, info, params, masks, batches, chunk: int):
  """`--finetune_steps` of the config's optimizer (peak LR scaled) keeping the masks."""
  c = config.copy_and_resolve_references()
  c.num_steps = _FT_STEPS.value
  c.optim.learning_rate = config.optim.learning_rate * _FT_LR.value
  c.optim.warmup_steps = min(c.optim.warmup_steps, _FT_STEPS.value // 10)
  tx = optax.chain(make_tx(c, model, info), pruning.keep_masked(masks))
  return train(model, task, tx, params, batches, chunk)


def main(argv):
  del argv
  config = _CONFIG.value
  config.num_steps = _STEPS.value
  spec = data.dataset_spec(config.data)
  task = tasks.get(spec.task)
  example = dummy_input(spec, config.data.get("seq_len", 0))
  whole = {"process_index": 0, "process_count": 1}
  model = build_model(config, spec)
  info = param_info_of(model, example)
  evaluate = evaluator(model, task, list(data.eval_batches(
      config.data, batch_size=config.eval_batch_size, **whole)))
  t0 = time.perf_counter()
  batches = stack_batches(data.make_train_iterator(config.data, batch_size=config.batch_size,
                                                   seed=config.seed, **whole), _STEPS.value)
  chunk = step_chunk(model, example)
  params = train(model, task, make_tx(config, model, info),
                 core.init_params_and_extra(model, jax.random.PRNGKey(config.seed), example)[0],
                 batches, chunk)
  del batches
  dense = evaluate({"params": params})
  print(f"dense: test accuracy {dense['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)",
        flush=True)
  ft_batches = stack_batches(data.make_train_iterator(
      config.data, batch_size=config.batch_size, seed=config.seed + 1, **whole), _FT_STEPS.value)
  results = {"dense": dense, "methods": {}}
  for method in _METHODS.value:
    rows = []
    for s in map(float, _SPARSITIES.value):
      masks = masks_for(method, params, info, s, config.model.name)
      pruned = pruning.apply_masks(params, masks)
      report = pruning.sparsity_report(pruned, masks)["global"]  # over all parameters
      before = evaluate({"params": pruned})
      tuned = (finetune(model, task, config, info, pruned, masks, ft_batches, chunk)
               if _FT_STEPS.value else None)
      after = evaluate({"params": tuned}) if tuned is not None else before
      rows.append({"sparsity": s, "pruned_fraction": report["pruned"] / report["size"],
                   "accuracy": before["accuracy"], "loss": before["loss"],
                   "finetuned_accuracy": after["accuracy"], "finetuned_loss": after["loss"]})
      print(f"{method} {s:.2f}: accuracy {before['accuracy']:.4f}, after fine-tuning "
            f"{after['accuracy']:.4f} ({report['pruned'] / report['size']:.3f} of all parameters "
            "pruned)",
            flush=True)
    results["methods"][method] = rows
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "pruning_study.json"), "w") as f:
    json.dump({"results": results, "steps": _STEPS.value, "finetune_steps": _FT_STEPS.value,
               "finetune_lr_scale": _FT_LR.value, "config": config.to_dict()}, f, indent=1,
              default=str)
  plots.save_png(plots.pruning_figure(results, f"{config.model.name} on {config.data.name}"),
                 os.path.join(_WORKDIR.value, "pruning_study.png"))


if __name__ == "__main__":
  app.run(main)
