"""The same train step on 1 device and on 8 simulated CPU devices (data x fsdp mesh)."""

import json

import pytest

from jaxlab.train.metrics import read_metrics

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
SHOW_SHARDING = """
import json, sys
import jax
from jaxlab.configs import mnist5k_mlp
from jaxlab import data, optim, sharding
from jaxlab.train.init import build_model, dummy_input, init_state
c = mnist5k_mlp.get_config()
c.data.data_dir = sys.argv[1]
c.mesh.data, c.mesh.fsdp = 4, 2
mesh = sharding.make_mesh(c.mesh)
spec = data.dataset_spec(c.data)
model = build_model(c, spec)
state, shardings = init_state(model, optim.make_optimizer(c.optim, c.num_steps),
                                 dummy_input(spec), 0, mesh)
def spec(x):
  s = list(x.sharding.spec)
  return s + [None] * (x.ndim - len(s))
print(json.dumps({"devices": jax.device_count(),
                  "kernel": spec(state.params["dense_1"]["kernel"]),
                  "mu": spec(state.opt_state[1][0].mu["dense_1"]["kernel"]),
                  "shards": len(state.params["dense_1"]["kernel"].addressable_shards)}))
"""


def _train(run_python, data_dir, workdir, env, *mesh):
  args = ["-m", "experiments.train", "--config=jaxlab/configs/mnist5k_mlp.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.model.hidden_widths=(64,64)", "--config.batch_size=64", "--config.num_steps=20",
          "--config.log_every=1", "--config.eval_every=0", "--config.stats_every=0",
          "--config.checkpoint_every=20", "--config.optim.warmup_steps=5", *mesh]
  done = run_python(*args, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir / "metrics.jsonl")}


def test_params_are_fsdp_sharded_on_eight_devices(tfds_data_dir, run_python):
  done = run_python("-c", SHOW_SHARDING, tfds_data_dir, env=EIGHT)
  assert done.returncode == 0, done.stderr[-3000:]
  info = json.loads(done.stdout.strip().splitlines()[-1])
  assert info["devices"] == 8
  assert info["kernel"] == ["fsdp", None]  # ('embed', 'mlp'): embed -> fsdp
  assert info["mu"] == info["kernel"]  # Adam moments follow their parameter
  assert info["shards"] == 8


@pytest.mark.parametrize("mesh", [("--config.mesh.data=8",),
                                  ("--config.mesh.data=4", "--config.mesh.fsdp=2")])
def test_eight_devices_match_one_device(tfds_data_dir, tmp_path, run_python, mesh):
  one = _train(run_python, tfds_data_dir, tmp_path / "one", None)
  eight = _train(run_python, tfds_data_dir, tmp_path / "eight", EIGHT, *mesh)
  assert sorted(one) == sorted(eight) == list(range(1, 21))
  assert eight[20] == pytest.approx(one[20], rel=1e-5)
  assert one[20] < one[1]


SWEEP = """
import json, sys
import jax, numpy as np, optax
from jaxlab import data, models
from jaxlab.analysis.lr_sweep import lr_mesh, make_sweep, stack_batches
from jaxlab.train import tasks
cfg = {"name": "digits", "data_dir": sys.argv[1], "task": "classification"}
train = stack_batches(data.make_train_iterator(cfg, batch_size=64, seed=0), 10)
evals = next(data.eval_batches(cfg, batch_size=359))
model = models.MLP(hidden_widths=(32,), num_classes=10)
lrs, seeds = np.array([2.0**k for k in range(-12, -4)], np.float32), np.array([0, 1], np.uint32)
mesh = lr_mesh(len(lrs))
sharded = make_sweep(model, optax.adam, tasks.CLASSIFICATION, mesh=mesh)(lrs, seeds, train, evals)
single = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(lrs, seeds, train, evals)
print(json.dumps({"devices": jax.device_count(), "mesh": dict(mesh.shape),
                  "shards": len(sharded[1].addressable_shards),
                  "max_diff": float(np.max(np.abs(np.asarray(sharded[1]) - np.asarray(single[1])))),
                  "loss": np.asarray(single[1]).tolist()}))
"""


def test_lr_sweep_is_split_over_devices_and_matches_one_device(run_python, tfds_data_dir):
  """8 LRs on 8 simulated devices: one LR per device, same losses as the unsharded program."""
  done = run_python("-c", SWEEP, tfds_data_dir, env=EIGHT)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["mesh"] == {"lr": 8} and out["shards"] == 8
  assert out["max_diff"] < 1e-5, out
