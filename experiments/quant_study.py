r"""Quantization study: one config trained under several quantization policies at the same
budget (quantization-aware training through the normal train loop), plus post-training
quantization (PTQ) of the fp32 model, all compared with fp32.

  python -m experiments.quant_study --config=jaxlab/configs/mnist5k_mlp.py \
      --policies=fp32,int8,w4a8,binary_w,fp8,fp8_delayed,lsq_w4a8 --workdir=/tmp/quant_study
  python -m experiments.quant_study --config=jaxlab/configs/mnist5k_resnet.py ...
  python -m experiments.quant_study --config=jaxlab/configs/shakespeare_lm.py ...

QAT: for every policy in --policies (jaxlab.quant.names()), `loop.train_and_evaluate` runs the
config with config.quant=<policy> in WORKDIR/<policy> (same data order, seed, optimizer and
num_steps; rerunning resumes or reuses those runs); its final eval loss / accuracy are read from
that run's metrics.jsonl. fp32 is always trained (first) since everything is relative to it.

PTQ (--ptq, jaxlab.quant.ptq) of the trained fp32 model, first layer and readout kept in float as
in the integer QAT policies (the input- and readout-role weights, jaxlab.quant.ptq.float_layers):
  int8  W8A8: int8 per-channel abs-max weights, int8 per-tensor static activation scales
        (abs-max over --calib_batches training batches);
  int4  W4A8: int4 per-channel weights with MSE-optimal clipping, the same int8 activations.
Each is evaluated like the QAT runs (`quantized_apply` on the eval split) and gets an error
report (weight SQNR, logits error and top-1 agreement vs fp32 on two eval batches).

Writes quant_study.json (every number), quant_study.md (the table: eval loss and accuracy per
policy and their differences to fp32) and quant_study.png (bar charts).
"""

import functools
import json
import os
import re
import time
from typing import Any, Sequence

from absl import app, flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from jaxlab import data, param, quant, sharding
from jaxlab.analysis import plots
from jaxlab.quant import ptq
from jaxlab.train import checkpoint, loop, step as step_lib, tasks
from jaxlab.train.init import (build_model, dummy_input, init_state, make_tx,
                               param_info_of)
from jaxlab.train.metrics import read_metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "a config file in jaxlab/configs")
_WORKDIR = flags.DEFINE_string("workdir", None, "one run per policy in WORKDIR/<policy>, plus "
                               "quant_study.{json,md,png}")
_POLICIES = flags.DEFINE_list("policies", ["fp32", "int8", "w4a8", "binary_w", "fp8"],
                              "QAT policies (jaxlab.quant.names())")
_PTQ = flags.DEFINE_list("ptq", ["int8", "int4"], "PTQ recipes of the fp32 model (empty: none)")
_CALIB = flags.DEFINE_integer("calib_batches", 4, "training batches for PTQ activation scales")
flags.mark_flags_as_required(["config", "workdir"])

PTQ_RECIPES = {
    "int8": {"label": "w8a8", "bits": 8, "method": "absmax", "act_bits": 8},
    "int4": {"label": "w4a8", "bits": 4, "method": "mse", "act_bits": 8},
}


def check_names(policies: Sequence[str], ptq_names: Sequence[str]) -> list[str]:
  """The policies to train (fp32 first, duplicates dropped); errors name the flag."""
  valid = quant.names()
  for name in policies:
    if name not in valid:
      raise ValueError(f"--policies: unknown quantization policy {name!r}; valid: "
                       f"{', '.join(valid)}")
  for name in ptq_names:
    if name not in PTQ_RECIPES:
      raise ValueError(f"--ptq: unknown recipe {name!r}; valid: {', '.join(PTQ_RECIPES)}")
  return list(dict.fromkeys(["fp32", *policies]))


def policy_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.quant = name
  return c


def final_metrics(workdir: str) -> dict[str, float]:
  """The last eval row and the last train loss of a run's metrics.jsonl."""
  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/loss" in r]
  if not evals:
    raise ValueError(f"{workdir}/metrics.jsonl has no eval row: the run did not finish")
  trains = [r for r in rows if "train/loss" in r]
  return {"eval_loss": evals[-1]["eval/loss"], "eval_accuracy": evals[-1]["eval/accuracy"],
          "train_loss": trains[-1]["train/loss"], "step": evals[-1]["step"]}


def train_policy(config: ml_collections.ConfigDict, name: str, workdir: str) -> dict[str, Any]:
  """QAT of one policy through the normal train loop."""
  run_dir = os.path.join(workdir, name)
  t0 = time.perf_counter()
  loop.train_and_evaluate(policy_config(config, name), run_dir)
  return {"kind": "qat", "policy": name, **final_metrics(run_dir),
          "wall_time_s": time.perf_counter() - t0}


def restore_params(config: ml_collections.ConfigDict, run_dir: str) -> tuple[Any, Any, Any]:
  """(model, params, param_info) of the newest checkpoint in run_dir."""
  mesh = sharding.make_mesh(config.mesh)
  spec = data.dataset_spec(config.data)
  model = build_model(config, spec)
  example = dummy_input(spec, config.data.get("seq_len", 0))
  info = param_info_of(model, example)
  state, _ = init_state(model, make_tx(config, model, info), example, config.seed, mesh)
  manager = checkpoint.make_manager(run_dir, max_to_keep=config.max_to_keep)
  restored = checkpoint.restore_latest(manager, state)
  manager.close()
  if restored is None:
    raise ValueError(f"no checkpoint in {run_dir}/checkpoints to quantize")
  return model, jax.device_get(restored[0].params), info


def evaluate_ptq(config, model, qparams, act_scales) -> dict[str, float]:
  """Eval loss / accuracy of the PTQ model over the same eval batches as the train loop."""
  task = tasks.get(config.data.task)
  apply = jax.jit(functools.partial(ptq.quantized_apply, model, act_scales=act_scales))
  sums = None
  for batch in data.eval_batches(config.data, batch_size=config.eval_batch_size,
                                 max_batches=config.get("eval_max_batches", 0) or None):
    logits = apply(qparams, task.inputs(batch))
    sums = step_lib.sum_trees(sums, task.eval_sums(logits, batch))
  return tasks.finish_eval(jax.device_get(sums))


def ptq_study(config, name: str, model, params, info, calib: list[dict]) -> dict[str, Any]:
  """PTQ recipe `name` of the fp32 params: eval metrics and an error summary."""
  r = PTQ_RECIPES[name]
  t0 = time.perf_counter()
  key = tasks.get(config.data.task).inputs_key
  keep_float = ptq.float_layers(info)
  qparams = ptq.quantize_params(params, info, bits=r["bits"], granularity="per_channel",
                                method=r["method"], keep_float=keep_float)
  scales = ptq.calibrate_activations(model, params, calib, bits=r["act_bits"], input_key=key)
  scales = {p: s for p, s in scales.items() if not re.fullmatch(keep_float, p)}
  metrics = evaluate_ptq(config, model, qparams, scales)
  batches = list(data.eval_batches(config.data, batch_size=config.eval_batch_size,
                                   max_batches=2))
  report = ptq.error_report(params, qparams, model=model, batches=batches, act_scales=scales,
                            input_key=key)
  sqnr = [w["sqnr_db"] for w in report["weights"].values()]
  return {"kind": "ptq", "policy": f"ptq_{name}", "recipe": r["label"],
          "eval_loss": metrics["loss"], "eval_accuracy": metrics["accuracy"],
          "weight_sqnr_db_mean": float(np.mean(sqnr)) if sqnr else float("nan"),
          "logits_rel_error": report["model"]["logits_rel_error"],
          "top1_agreement": report["model"]["top1_agreement"],
          "quantized_weights": sorted(report["weights"]),
          "wall_time_s": time.perf_counter() - t0}


def relative_to_fp32(results: dict[str, dict]) -> None:
  base = results["fp32"]
  for r in results.values():
    r["delta_loss"] = r["eval_loss"] - base["eval_loss"]
    r["rel_loss"] = r["eval_loss"] / base["eval_loss"]
    r["delta_accuracy"] = r["eval_accuracy"] - base["eval_accuracy"]


def table(results: dict[str, dict]) -> str:
  rows = ["| policy | kind | eval loss | vs fp32 | eval accuracy | vs fp32 (points) | "
          "train loss | wall s |", "|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    kind = "QAT" if r["kind"] == "qat" else f"PTQ {r['recipe']}"
    train = f"{r['train_loss']:.4f}" if "train_loss" in r else "-"
    rows.append(f"| {name} | {kind} | {r['eval_loss']:.4f} | {r['delta_loss']:+.4f} "
                f"(x{r['rel_loss']:.3f}) | {100 * r['eval_accuracy']:.2f}% | "
                f"{100 * r['delta_accuracy']:+.2f} | {train} | {r['wall_time_s']:.0f} |")
  return "\n".join(rows) + "\n"


def title(config: ml_collections.ConfigDict) -> str:
  return f"{config.model.name} / {config.data.name}, {config.num_steps} steps"


def run(config: ml_collections.ConfigDict, policies: Sequence[str], ptq_names: Sequence[str],
        workdir: str, calib_batches: int = 4) -> dict[str, Any]:
  """The whole study; writes quant_study.{json,md,png} to workdir and returns the JSON dict."""
  policies = check_names(policies, ptq_names)
  if calib_batches < 1:
    raise ValueError(f"--calib_batches={calib_batches} must be a positive integer")
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for name in policies:
    results[name] = train_policy(config, name, workdir)
    r = results[name]
    print(f"{name}: eval loss {r['eval_loss']:.4f}, accuracy {100 * r['eval_accuracy']:.2f}% "
          f"({r['wall_time_s']:.0f} s)")
  if ptq_names:
    fp32 = policy_config(config, "fp32")
    model, params, info = restore_params(fp32, os.path.join(workdir, "fp32"))
    it = data.make_train_iterator(fp32.data, batch_size=fp32.batch_size, seed=fp32.seed)
    calib = [next(it) for _ in range(calib_batches)]
    for name in ptq_names:
      r = results[f"ptq_{name}"] = ptq_study(fp32, name, model, params, info, calib)
      print(f"ptq_{name}: eval loss {r['eval_loss']:.4f}, accuracy "
            f"{100 * r['eval_accuracy']:.2f}%, logits rel. error {r['logits_rel_error']:.3g}")
  relative_to_fp32(results)
  out = {"num_steps": int(config.num_steps), "model": config.model.to_dict(),
         "parametrization": param.describe(param.get(**config.param)),
         "data": config.data.name, "results": results, "config": config.to_dict()}
  with open(os.path.join(workdir, "quant_study.json"), "w") as f:
    json.dump(out, f, indent=1, default=str)
  with open(os.path.join(workdir, "quant_study.md"), "w") as f:
    f.write(f"{config.model.name} on {config.data.name}, {config.num_steps} steps per policy\n\n")
    f.write(table(results))
  plots.save_png(plots.quant_figure(results, title(config)), os.path.join(workdir, "quant_study.png"))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  out = run(_CONFIG.value, _POLICIES.value, _PTQ.value, _WORKDIR.value, _CALIB.value)
  print(table(out["results"]))


if __name__ == "__main__":
  app.run(main)
