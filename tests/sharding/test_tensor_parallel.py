"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): the 'model' mesh axis on 8 simulated
CPU devices gives the data-parallel run's losses, and its step really splits the matmuls."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxlab import models
from jaxlab.sharding import tensor_parallel
from jaxlab.train.metrics import read_metrics

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

SHOW_STEP = """
import json, re
import jax, jax.numpy as jnp, numpy as np
from jaxlab import models, optim, sharding
from jaxlab.configs import common
from jaxlab.train import step as step_lib, tasks
from jaxlab.train.init import init_state
D, H, L, B = 64, 4, 32, 8
model = models.build(dict(name="transformer", d_model=D, num_layers=2, num_heads=H,
                          vocab_size=256))
mesh = sharding.make_mesh(dict(data=2, fsdp=2, model=2))
tx = optim.make_optimizer(common.base_config().optim, 100)
state, shardings = init_state(model, tx, jnp.zeros((1, L), jnp.int32), 0, mesh)
rng = np.random.default_rng(0)
batch = sharding.shard_batch({k: rng.integers(0, 256, (B, L)).astype(np.int32)
                              for k in ("inputs", "targets")}, mesh)
spec = lambda x: [a for a in x.sharding.spec] + [None] * (x.ndim - len(x.sharding.spec))
blk = state.params["block_0"]
lower = step_lib.train_step.lower(state, batch, model=model, tx=tx, task=tasks.LM,
                                  state_sharding=step_lib.Static(shardings))
hlo = lower.compile().as_text()
dots = {}
for line in hlo.splitlines():
  m = re.search(r"= f32\\[([0-9,]*)\\][^ ]* dot\\(.*op_name=\\"[^\\"]*"
                r"jvp\\(TransformerLM\\)/block_0/(attn/qkv|mlp/up|mlp/down|attn/out)/", line)
  if m:
    dots[m.group(2)] = [int(d) for d in m.group(1).split(",")]
plain = float(tasks.LM.loss(model.apply({"params": jax.device_get(state.params)},
                                         np.asarray(batch["inputs"])), jax.device_get(batch)))
specs = {k: spec(blk[m][n]["kernel"]) for k, (m, n) in
         {"qkv": ("attn", "qkv"), "out": ("attn", "out"), "up": ("mlp", "up"),
          "down": ("mlp", "down")}.items()}
up = blk["mlp"]["up"]["kernel"]
up_shard, up_global = list(up.addressable_shards[0].data.shape), list(up.shape)
_, metrics = step_lib.train_step(state, batch, model=model, tx=tx, task=tasks.LM,  # donates state
                                 state_sharding=step_lib.Static(shardings))
print(json.dumps({
    "mesh": dict(mesh.shape), "batch": spec(batch["inputs"]),
    "specs": specs, "up_shard": up_shard, "up_global": up_global,
    "dots": dots, "tp_loss": float(metrics["loss"]), "plain_loss": plain}))
"""


_STEP_INFO = {}


@pytest.fixture
def step_info(run_python):
  """SHOW_STEP's output, computed once per session (one subprocess for the three tests)."""
  if not _STEP_INFO:
    done = run_python("-c", SHOW_STEP, env=EIGHT)
    assert done.returncode == 0, done.stderr[-3000:]
    _STEP_INFO.update(json.loads(done.stdout.strip().splitlines()[-1]))
  return _STEP_INFO


def test_lm_params_put_heads_and_mlp_on_model_and_embed_on_fsdp(step_info):
  assert step_info["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
  assert step_info["batch"] == [["data", "fsdp"], None]  # batch replicated over 'model'
  assert step_info["specs"] == {"qkv": ["fsdp", "model"], "out": ["model", "fsdp"],
                                "up": ["fsdp", "model"], "down": ["model", "fsdp"]}
  D, hidden = step_info["up_global"]
  assert step_info["up_shard"] == [D // 2, hidden // 2]  # half the rows (fsdp), half the columns


def test_compiled_step_splits_the_ffn_and_qkv_matmuls(step_info):
  """Local matmul shapes of block 0's forward: 8 x 32 tokens over 4 batch shards = 64 local
  tokens; column-parallel up [hidden/2, tokens] (feature-major) and qkv [tokens, 3 D / 2] (whole
  heads per shard), row-parallel out / down contract over D / 2 and hidden / 2."""
  D, hidden = step_info["up_global"]
  tokens = 8 * 32 // 4
  dots = step_info["dots"]
  assert dots["mlp/up"] == [hidden // 2, tokens], dots
  assert dots["attn/qkv"] == [tokens, 3 * D // 2], dots
  assert dots["mlp/down"] == [D, tokens] and dots["attn/out"] == [tokens, D], dots


def test_tensor_parallel_loss_equals_plain_apply(step_info):
  """The head-major qkv view computes the same function as the stored [q | k | v] layout."""
  print(f"tp vs plain apply loss: {step_info['tp_loss']!r} {step_info['plain_loss']!r}")
  assert step_info["tp_loss"] == pytest.approx(step_info["plain_loss"], rel=1e-5)


def _jaxpr(model, params, x, mesh=None):
  if mesh is None:
    return str(jax.make_jaxpr(model.apply)(params, x))
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    return str(jax.make_jaxpr(model.apply)(params, x))


def test_no_constraints_without_a_model_axis():
  """Plain model.apply (no mesh) and a mesh whose 'model' axis has one device trace the program
  they traced before tensor parallelism: no sharding constraint at all."""
  model = models.build(dict(name="transformer", d_model=16, num_layers=1, num_heads=2,
                            vocab_size=32))
  x = jnp.zeros((2, 8), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x))
  one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "model"))
  assert tensor_parallel.model_shards() == 1
  for mesh in (None, one):
    assert "sharding_constraint" not in _jaxpr(model, params, x, mesh)
  x = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 32)
  with jax.sharding.use_abstract_mesh(one.abstract_mesh):
    under_mesh = jax.jit(model.apply)(params, x)
  np.testing.assert_array_equal(under_mesh, jax.jit(model.apply)(params, x))


@pytest.mark.parametrize("sizes, shards", [((8, 8, 8), 2), ((32, 16, 16), 2), ((12, 6, 6), 3)])
def test_head_major_round_trip(sizes, shards):
  """Group i of the head-major view holds the i-th 1/shards of q, of k and of v (whole heads),
  and split_head_major returns each block in its stored order."""
  w = jnp.arange(2 * sum(sizes)).reshape(2, sum(sizes))
  view = tensor_parallel.head_major(w, sizes, shards)
  group = view.reshape(2, shards, -1)[:, 1]
  starts = np.cumsum((0,) + sizes[:-1])
  want = np.concatenate([w[:, s + n // shards:s + 2 * n // shards] for s, n in zip(starts, sizes)],
                        axis=-1)
  np.testing.assert_array_equal(group, want)
  parts = tensor_parallel.split_head_major(view, sizes, shards)
  np.testing.assert_array_equal(jnp.concatenate(parts, axis=-1), w)


def _losses(run_python, workdir, args, mesh):
  done = run_python("-m", "experiments.train", f"--workdir={workdir}", *args, *mesh, env=EIGHT)
  assert done.returncode == 0, done.stderr[-3000:]
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir / "metrics.jsonl")}


COMMON = ["--config.num_steps=10", "--config.log_every=1", "--config.eval_every=0",
          "--config.stats_every=0", "--config.depth_metrics_every=0",
          "--config.checkpoint_every=10", "--config.optim.warmup_steps=2"]
LM = ["--config=jaxlab/configs/shakespeare_lm.py", "--config.model.d_model=64",
      "--config.model.num_layers=2", "--config.model.num_heads=4", "--config.data.seq_len=32",
      "--config.batch_size=8", "--config.eval_batch_size=8", "--config.eval_max_batches=1"]
VIT = ["--config=jaxlab/configs/mnist5k_vit.py", "--config.model.dim=32",
       "--config.model.depth=2", "--config.model.num_heads=4", "--config.batch_size=16",
       "--config.eval_batch_size=40"]


@pytest.mark.parametrize("name, args, mesh", [
    ("lm", LM, ("--config.mesh.model=2",)),
    ("vit", VIT, ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.model=2")),
])
def test_tensor_parallel_training_matches_data_parallel(tfds_data_dir, tmp_path, run_python, name,
                                                        args, mesh):
  """10 steps on 8 devices: the tensor-parallel mesh's per-step train loss equals the pure
  data-parallel run's (only the order of f32 reductions differs: relative 1e-5)."""
  args = [*args, *COMMON, f"--config.data.data_dir={tfds_data_dir}"]
  dp = _losses(run_python, tmp_path / "dp", args, ("--config.mesh.data=-1",))
  tp = _losses(run_python, tmp_path / "tp", args, mesh)
  assert sorted(dp) == sorted(tp) == list(range(1, 11))
  diffs = {s: abs(tp[s] - dp[s]) / abs(dp[s]) for s in dp}
  print(f"{name}: max relative |tp - dp| train loss over 10 steps = {max(diffs.values()):.2e} "
        f"(step-10 loss {dp[10]:.6f})")
  for s in dp:
    assert tp[s] == pytest.approx(dp[s], rel=1e-5), (s, dp, tp)
  assert dp[10] < dp[1]
