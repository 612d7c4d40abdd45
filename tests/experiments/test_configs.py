"""Every shipped config builds its data, model and optimizer and trains a few steps on real data."""

import glob
import importlib
import os

import numpy as np
import pytest

from jaxlab.train import loop
from jaxlab.train.metrics import read_metrics
from tests.conftest import REPO

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{REPO}/jaxlab/configs/*.py")
                 if not os.path.basename(p).startswith(("_", "common")))

# Shrink each config to seconds; keep the model family, data and optimizer as shipped.
SHRINK = {
    "transformer": dict(d_model=32, num_layers=2, num_heads=2),
    "resnet": dict(width=8),
    "vit": dict(dim=32, depth=1),
    "mlp": dict(hidden_widths=(32,)),
    "convnext": dict(widths=(8, 16), depths=(1, 1)),
    "longconv": dict(d_model=32, num_layers=2),
}


def test_all_five_configs_are_shipped():
  assert {"mnist5k_mlp", "digits_mlp", "mnist5k_resnet", "mnist5k_vit",
          "shakespeare_lm"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains(name, tfds_data_dir, tmp_path):
  module = importlib.import_module(f"jaxlab.configs.{name}")
  assert "python -m experiments.train --config=jaxlab/configs/" + name in module.__doc__
  assert "Reaches:" in module.__doc__
  c = module.get_config()
  c.data.data_dir = tfds_data_dir
  c.model.update(SHRINK[c.model.name])
  if c.data.task == "lm":
    c.data.seq_len, c.eval_max_batches = 32, 2
  c.update(num_steps=6, log_every=1, eval_every=0, stats_every=3, checkpoint_every=6,
           batch_size=16, eval_batch_size=40)
  c.optim.warmup_steps = 1
  result = loop.train_and_evaluate(c, str(tmp_path))
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 7))
  assert np.isfinite(result["eval/loss"]) and 0 <= result["eval/accuracy"] <= 1
  assert any(k.startswith("rms_updates/") for k in rows[2])
