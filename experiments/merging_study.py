r"""Merging two fine-tunes of one base model trained on disjoint halves of the classes.

  python -m experiments.merging_study --config=jaxlab/configs/mnist5k_mlp.py --base_steps=300 \
      --finetune_steps=300 --workdir=/tmp/merging

The base model trains `--base_steps` on every class; model A then fine-tunes `--finetune_steps`
on classes 0-4 only and model B on classes 5-9 only (same optimizer, fresh schedule), both from
the base. Every merge of jaxlab.weights.merging combines them: uniform and greedy soups
(Wortsman et al. 2022), task arithmetic (Ilharco et al. 2023), TIES (Yadav et al. 2023), DARE +
task arithmetic (Yu et al. 2024) and LiNeS (Wang et al. 2025). Scale-type hyperparameters are
picked on a held-out part of the training split (`--val_examples`, never trained on), as those
papers tune them. Reported: test accuracy on classes 0-4, on 5-9 and on all. Writes
merging_study.json and prints a table.
"""

import itertools
import json
import os

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from experiments.step_chunk_flag import step_chunk
from jaxlab import data
from jaxlab.analysis.seed_runs import evaluator, train_seeds
from jaxlab.train import tasks
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of
from jaxlab.weights import merging

_CONFIG = config_flags.DEFINE_config_file("config", None, "a jaxlab/configs file")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the JSON goes")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 300, "steps of the base model on every class")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 300, "steps of each fine-tune on its half")
_VAL = flags.DEFINE_integer("val_examples", 500, "held-out train examples for tuning the merges")
_SEED = flags.DEFINE_integer("seed", 0, "init and data-order seed")
flags.mark_flags_as_required(["config", "workdir"])

HALVES = {"0-4": range(0, 5), "5-9": range(5, 10)}
SCALES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3)


def load_split(config, split: str) -> dict:
  """Every example of a split (through jaxlab.data's eval reader), as numpy arrays."""
  batches = list(data.eval_batches(config.data, batch_size=config.eval_batch_size, split=split,
                                   process_index=0, process_count=1))
  keep = np.concatenate([b["mask"] for b in batches]) > 0
  return {k: np.concatenate([b[k] for b in batches])[keep] for k in ("image", "label")}


def sampled_batches(arrays: dict, index: np.ndarray, batch_size: int, steps: int,
                    seed: int) -> dict:
  """[1, steps, batch, ...] batches drawn from arrays[index] in a fresh order per epoch."""
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(index)
                          for _ in range(-(-steps * batch_size // len(index)))])
  take = order[:steps * batch_size].reshape(steps, batch_size)
  return {k: v[take][None] for k, v in arrays.items()}


def eval_batches(arrays: dict, classes, batch_size: int) -> list[dict]:
  """Masked eval batches of the examples whose label is in `classes` (all if None)."""
  n = len(arrays["label"])
  mask = np.ones(n, np.float32) if classes is None else np.isin(
      arrays["label"], list(classes)).astype(np.float32)
  out = []
  for start in range(0, n, batch_size):
    b = {k: v[start:start + batch_size] for k, v in arrays.items()}
    b["mask"] = mask[start:start + batch_size]
    pad = batch_size - len(b["label"])
    if pad:
      b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    out.append(b)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  spec = data.dataset_spec(config.data)
  task = tasks.get(spec.task)
  if spec.task != "classification" or spec.num_classes != 10:
    raise app.UsageError(f"config.data.name={config.data.name!r}: the study needs 10 classes")
  example = dummy_input(spec)
  train = load_split(config, config.data.get("train_split", "train"))
  test = load_split(config, config.data.get("eval_split", "test"))
  rng = np.random.default_rng(_SEED.value + 99)
  order = rng.permutation(len(train["label"]))
  val_idx, fit_idx = order[:_VAL.value], order[_VAL.value:]
  val = {k: v[val_idx] for k, v in train.items()}
  model = build_model(config, spec)
  info = param_info_of(model, example)
  chunk = step_chunk(model, example)

  def fit(index, steps, seed, init=None):
    c = config.copy_and_resolve_references()
    c.num_steps = steps
    c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 10)
    tx = make_tx(c, model, info)
    batches = sampled_batches(train, index, c.batch_size, steps, seed)
    params = train_seeds(model, tx, task, [_SEED.value], batches, init=init, chunk=chunk)
    return jax.tree.map(lambda x: x[0], params)

  base = fit(fit_idx, _BASE_STEPS.value, 1)
  halves = {h: fit_idx[np.isin(train["label"][fit_idx], list(cls))] for h, cls in HALVES.items()}
  tuned = [fit(halves[h], _FT_STEPS.value, 2 + i, init=base) for i, h in enumerate(HALVES)]
  evals = {name: evaluator(model, task, eval_batches(test, cls, config.eval_batch_size))
           for name, cls in (*HALVES.items(), ("all", None))}
  val_eval = evaluator(model, task, eval_batches(val, None, config.eval_batch_size))

  def score(params):
    return val_eval({"params": params})["accuracy"]

  taus = merging.task_vectors(base, tuned)
  candidates = {
      "base": {(): base}, "fine-tune 0-4": {(): tuned[0]}, "fine-tune 5-9": {(): tuned[1]},
      "uniform soup": {(): merging.uniform_soup(tuned)},
      "task arithmetic": {(s,): merging.task_arithmetic(base, taus, s) for s in SCALES},
      "TIES (density 0.2)": {(s,): merging.ties_merge(base, taus, 0.2, s) for s in SCALES},
      "DARE (p 0.9) + task arithmetic": {(s,): merging.dare_merge(
          base, taus, 0.9, jax.random.PRNGKey(_SEED.value), scale=s) for s in SCALES},
      "LiNeS": {(a, b): merging.task_arithmetic(base, [merging.lines_scale(
          jax.tree.map(lambda x, y: x + y, *taus), None, a, b)])
          for a, b in itertools.product((0.2, 0.5, 0.8), (0.3, 0.6, 1.0))},
  }
  soup, kept = merging.greedy_soup(tuned, score)
  candidates["greedy soup"] = {tuple(int(k) for k in kept): soup}
  rows = {}
  for name, options in candidates.items():
    choice = max(options, key=lambda o: score(options[o]))  # tuned on the held-out examples
    params = options[choice]
    rows[name] = {"hyper": list(choice), "val_accuracy": score(params),
                  **{half: evals[half]({"params": params})["accuracy"] for half in evals}}
  print("| model | hyperparameters (picked on held-out) | acc 0-4 | acc 5-9 | acc all |")
  print("|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['hyper']} | {r['0-4']:.4f} | {r['5-9']:.4f} | {r['all']:.4f} |")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "merging_study.json"), "w") as f:
    json.dump({"rows": rows, "base_steps": _BASE_STEPS.value, "finetune_steps": _FT_STEPS.value,
               "val_examples": _VAL.value, "config": config.to_dict()}, f, indent=1,
              default=str)


if __name__ == "__main__":
  app.run(main)
