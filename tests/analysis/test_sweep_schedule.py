"""run_sweep computes the runs lr_sweep.make_sweep computes, whichever schedule it takes."""

import json

import numpy as np
import optax
import pytest

from jaxlab import models
from jaxlab.analysis import make_sweep
from jaxlab.analysis.sweep_schedule import run_sweep
from jaxlab.train import tasks
from tests.random_data import classification_batches


@pytest.fixture(scope="module")
def setup():
  train, evals = classification_batches(steps=23, batch=16, features=12, classes=4)
  model = models.MLP(hidden_widths=(16,), num_classes=4)
  lrs, seeds = [1e-3, 3e-3, 1e-2, 1e-1], [0, 1]  # auto: 2 alone, 2 predicted
  ref = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(
      np.float32(lrs), np.uint32(seeds), train, evals)
  return model, lrs, seeds, train, evals, ref


@pytest.mark.parametrize("schedule", ["vmap", "loop", "auto"])
def test_every_schedule_matches_one_vmapped_program(setup, schedule):
  model, lrs, seeds, train, evals, (ref_train, ref_eval) = setup
  out = run_sweep(model, optax.adam, tasks.CLASSIFICATION, lrs, seeds, train, evals,
                  schedule=schedule)
  assert out["train_loss"].shape == (4, 2, 23)
  np.testing.assert_allclose(out["train_loss"], ref_train, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["eval_loss"], ref_eval, rtol=1e-4, atol=1e-5)
  if schedule == "auto":
    assert out["schedule"] in ("vmap", "loop") and set(out["estimate"]) == {"vmap", "loop"}
    assert out["schedule"] == min(out["estimate"], key=out["estimate"].get)
  else:
    assert out["schedule"] == schedule


def test_unknown_schedule_is_named(setup):
  model, lrs, seeds, train, evals, _ = setup
  with pytest.raises(ValueError, match="schedule='chunks'.*auto, vmap, loop"):
    run_sweep(model, optax.adam, tasks.CLASSIFICATION, lrs, seeds, train, evals,
              schedule="chunks")


def test_step_flops_counts_one_steps_matmuls():
  from jaxlab.analysis.sweep_schedule import step_flops  # pylint: disable=g-import-not-at-top
  B, D, H, C = 64, 100, 128, 10
  batches = {"image": np.zeros((5, B, D), np.float32), "label": np.zeros((5, B), np.int32)}
  flops = step_flops(models.MLP(hidden_widths=(H,), num_classes=C), optax.adam(1e-3),
                     tasks.CLASSIFICATION, batches)
  # forward and weight gradients of both layers, the input gradient of the readout only
  matmuls = 2 * B * (D * H + H * C) * 2 + 2 * B * H * C
  assert matmuls <= flops <= 1.5 * matmuls, (flops, matmuls)  # + elementwise, softmax, Adam


_ON_TWO_DEVICES = """
import json, numpy as np, optax
from jaxlab import models
from jaxlab.analysis.lr_sweep import lr_mesh, make_sweep
from jaxlab.analysis.sweep_schedule import run_sweep
from jaxlab.train import tasks
from tests.random_data import classification_batches
train, evals = classification_batches(steps=9, batch=16, features=12, classes=4)
model = models.MLP(hidden_widths=(16,), num_classes=4)
lrs = [1e-3, 2e-3, 3e-3, 6e-3, 1e-2, 2e-2, 3e-2, 1e-1]  # auto: 2 chunks of 2 alone, 2 predicted
ref = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(np.float32(lrs), np.uint32([0]),
                                                          train, evals)
out = {}
for schedule in ("vmap", "loop", "auto"):
  got = run_sweep(model, optax.adam, tasks.CLASSIFICATION, lrs, [0], train, evals,
                  schedule=schedule, mesh=lr_mesh(len(lrs)))
  out[schedule] = {"mesh": lr_mesh(len(lrs)).size, "schedule": got["schedule"],
                   "estimate": got["estimate"],
                   "train": float(np.abs(got["train_loss"] - ref[0]).max()),
                   "eval": float(np.abs(got["eval_loss"] - ref[1]).max())}
try:
  run_sweep(model, optax.adam, tasks.CLASSIFICATION, lrs[:3], [0], train, evals,
            mesh=lr_mesh(len(lrs)))
except ValueError as e:
  out["error"] = str(e)
print(json.dumps(out))
"""


def test_with_an_lr_mesh_every_schedule_matches_one_program(run_python):
  """Two devices: chunks of 2 LRs (one per device) or the rest split over both."""
  done = run_python("-c", _ON_TWO_DEVICES,
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  for schedule in ("vmap", "loop", "auto"):
    got = out[schedule]
    assert got["mesh"] == 2
    assert got["train"] < 1e-5 and got["eval"] < 1e-5, got
  assert out["vmap"]["schedule"] == "vmap" and out["loop"]["schedule"] == "loop"
  auto = out["auto"]
  assert set(auto["estimate"]) == {"vmap", "loop"}
  assert auto["schedule"] == min(auto["estimate"], key=auto["estimate"].get)
  assert "3 learning rates do not split over the mesh's 2 devices" in out["error"]
