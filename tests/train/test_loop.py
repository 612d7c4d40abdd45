"""The train loop end to end on real mnist5k: metrics, eval, checkpoints, stats, NaN stop."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlab.errors import UserError
from jaxlab.train import loop
from jaxlab.train.metrics import read_metrics


def test_trains_and_writes_outputs(mlp_config, tmp_path):
  result = loop.train_and_evaluate(mlp_config, str(tmp_path))
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 41))
  first, last = rows[0]["train/loss"], np.mean([r["train/loss"] for r in rows[-5:]])
  assert last < 0.6 * first
  assert result["eval/accuracy"] > 0.6  # 40 steps of a 64-wide MLP on 4,000 digits
  evals = [r for r in rows if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [20, 40]
  stats = [r for r in rows if any(k.startswith("rms_grads/") for k in r)]
  assert [r["step"] for r in stats] == [20, 40]
  assert {"rms_params/dense_0/kernel", "rms_updates/readout/kernel"} <= set(stats[0])
  assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 40
  described = json.loads((tmp_path / "parametrization.json").read_text())
  assert described == {"name": "sp", "base_width": 0, "width": 64, "base_depth": 0, "depth": 2}
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def test_per_layer_rms_matches_params(mlp_config, tmp_path):
  """The logged rms of a parameter equals the rms recomputed from the checkpoint before that step."""
  mlp_config.num_steps, mlp_config.stats_every = 21, 21
  loop.train_and_evaluate(mlp_config, str(tmp_path))
  row = read_metrics(tmp_path / "metrics.jsonl")[-1]
  restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "20" / "state")
  kernel = np.asarray(restored["params"]["dense_1"]["kernel"])
  np.testing.assert_allclose(row["rms_params/dense_1/kernel"], np.sqrt(np.mean(kernel**2)), rtol=1e-5)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(mlp_config, tmp_path):
  mlp_config.optim.update(name="sgd", learning_rate=1e4, grad_clip=0.0, warmup_steps=0,
                          schedule="constant")
  mlp_config.checkpoint_every = 1
  mlp_config.num_steps = 200
  mlp_config.divergence.factor = 0.0  # the non-finite check alone (the guard skips saves sooner)
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite .* at step (\d+)") as err:
    loop.train_and_evaluate(mlp_config, str(tmp_path))
  bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert steps and steps[-1] == bad_step - 1
  state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(steps[-1]) / "state")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
  assert f"last good checkpoint is step {steps[-1]}" in str(err.value)


@pytest.mark.parametrize("key,value,match", [
    ("checkpoint_every", 0, "config.checkpoint_every=0 must be a positive integer"),
    ("eval_every", -1, "config.eval_every=-1 must be >= 0"),
])
def test_bad_loop_settings_are_named(mlp_config, tmp_path, key, value, match):
  mlp_config[key] = value
  with pytest.raises(UserError, match=match):
    loop.train_and_evaluate(mlp_config, str(tmp_path))


def test_batch_not_divisible_by_devices_is_named():
  from jaxlab.configs import mnist5k_mlp
  c = mnist5k_mlp.get_config()
  c.batch_size = 12
  with pytest.raises(UserError, match="config.batch_size=12 must be divisible by the 8 devices"):
    loop.validate_config(c, num_devices=8)


def test_depth_metrics_are_logged_and_match_a_recomputation(tfds_data_dir, tmp_path):
  """config.depth_metrics_every: depth/* keys at steps 2 and 4 of a 3-block LM; the logged block
  variances equal depth_diagnostics recomputed from the step-4 checkpoint on the same batch."""
  from jaxlab.configs import shakespeare_lm
  from jaxlab import data
  from jaxlab.analysis import depth_diagnostics
  from jaxlab.train import tasks
  from jaxlab.train.init import build_model
  c = shakespeare_lm.get_config()
  c.data.data_dir, c.data.seq_len = tfds_data_dir, 32
  c.model.update(d_model=16, num_layers=3, num_heads=2)
  c.update(batch_size=4, eval_batch_size=4, eval_max_batches=1, num_steps=4, log_every=1,
           eval_every=2, depth_metrics_every=2, stats_every=0, checkpoint_every=4)
  c.optim.warmup_steps = 1
  loop.train_and_evaluate(c, str(tmp_path))
  rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "depth/block_var_last_first" in r]
  assert [r["step"] for r in rows] == [2, 4]
  assert {"depth/grad_norm/block_2", "depth/grad_norm_max_min", "depth/angular_distance_n1/block_1",
          "depth/removal_loss_delta/block_0"} <= set(rows[-1])
  params = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "4" / "state")["params"]
  batch = next(data.eval_batches(c.data, batch_size=4, max_batches=1))
  var = depth_diagnostics.block_output_variance(build_model(c, data.dataset_spec(c.data)), params,
                                                tasks.LM.inputs(batch))
  np.testing.assert_allclose([rows[-1][f"depth/block_var/block_{i}"] for i in range(3)],
                             var["variance"], rtol=1e-4)


def test_depth_metrics_under_a_stateful_quant_policy(tfds_data_dir, tmp_path):
  """quant=fp8_delayed (amax histories in TrainState.extra): depth metrics are logged, finite."""
  from jaxlab.configs import shakespeare_lm
  c = shakespeare_lm.get_config()
  c.data.data_dir, c.data.seq_len = tfds_data_dir, 16
  c.model.update(d_model=16, num_layers=2, num_heads=2)
  c.update(batch_size=4, eval_batch_size=4, eval_max_batches=1, num_steps=2, log_every=1,
           eval_every=2, depth_metrics_every=2, stats_every=0, checkpoint_every=2,
           quant="fp8_delayed")
  c.optim.warmup_steps = 1
  loop.train_and_evaluate(c, str(tmp_path))
  row = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 2][-1]
  depth = {k: v for k, v in row.items() if k.startswith("depth/")}
  assert "depth/removal_loss_delta/block_1" in depth and np.all(np.isfinite(list(depth.values())))


def test_depth_metrics_need_a_block_model(mlp_config, tmp_path):
  mlp_config.depth_metrics_every = 20
  with pytest.raises(UserError, match="config.depth_metrics_every=20 needs a model with residual"):
    loop.train_and_evaluate(mlp_config, str(tmp_path))
