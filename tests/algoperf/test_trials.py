"""Trials: vmapped and one-by-one runs agree, and the recorded metric is the model's masked
error rate on the validation batch, recomputed independently."""

import jax
import numpy as np
import pytest

from jaxlab.algoperf import submission, trials, workloads
from jaxlab.train import core, step_loops


@pytest.fixture(scope="module")
def digits(tfds_data_dir):
  return workloads.load(workloads.get("digits_mlp"), tfds_data_dir, num_steps=30)


HPARAMS = [{"learning_rate": 3e-3, "b1": 0.9, "b2": 0.99, "weight_decay": 1e-3,
            "warmup_fraction": 0.1},
           {"learning_rate": 1e-3, "b1": 0.85, "b2": 0.95, "weight_decay": 1e-2,
            "warmup_fraction": 0.05}]


def test_vmapped_equals_sequential_and_an_independent_recomputation(digits):
  sub = submission.from_zoo("adamw")
  saved = {True: [], False: []}
  together = trials.run_trials(digits, sub, HPARAMS, [3, 4], vmapped=True,
                               on_result=lambda k, r: saved[True].append((k, r)))
  alone = trials.run_trials(digits, sub, HPARAMS, [3, 4], vmapped=False,
                            on_result=lambda k, r: saved[False].append((k, r)))
  assert saved == {True: list(enumerate(together)), False: list(enumerate(alone))}
  for a, b in zip(together, alone):
    assert a["eval_steps"] == b["eval_steps"] == [30]  # eval_every 40 > budget: once, at the end
    np.testing.assert_allclose(a["eval_metric"], b["eval_metric"], atol=1e-6)
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    assert a["vmapped"] and not b["vmapped"] and a["seconds"][-1] > 0
  # trial 1 by hand: init, 30 scanned steps, logits -> masked error rate in numpy
  tx = sub.make(HPARAMS[1], 30)
  params, extra = core.init_params_and_extra(digits.model, jax.random.PRNGKey(4), digits.example)
  (params, _, extra), losses = step_loops.scan_steps(
      step_loops.optimizer_step(digits.model, tx, digits.task), (params, tx.init(params), extra),
      digits.train_batches)
  logits = np.asarray(core.logits(digits.model, params, extra, digits.eval_batch, digits.task))
  mask = digits.eval_batch["mask"] > 0
  error = 1 - (logits.argmax(-1) == digits.eval_batch["label"])[mask].mean()
  np.testing.assert_allclose(together[1]["eval_metric"][-1], error, atol=1e-6)
  np.testing.assert_allclose(together[1]["train_loss"][-1], float(losses.mean()), rtol=1e-5)
  assert error < 0.5  # it learned


def test_evaluates_every_interval(digits, tfds_data_dir):
  wd = workloads.load(workloads.get("digits_mlp"), tfds_data_dir, num_steps=100)
  out = trials.run_trials(wd, submission.from_zoo("sgd_nesterov"),
                          [{"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                            "warmup_fraction": 0.05}], [0])
  (r,) = out
  assert r["eval_steps"] == [40, 80, 100] and len(r["eval_metric"]) == 3
  assert np.all(np.diff(r["seconds"]) > 0)
  assert r["eval_metric"][-1] < r["eval_metric"][0] or r["eval_metric"][0] < 0.1


_TWO_DEVICES = """
import json, sys, jax
from jaxlab.algoperf import submission, trials, workloads
wd = workloads.load(workloads.get("digits_mlp"), sys.argv[1], num_steps=30)
hparams = json.loads(sys.argv[2])
out = {str(vmapped): trials.run_trials(wd, submission.from_zoo("adamw"), hparams,
                                       list(range(3, 3 + len(hparams))), vmapped=vmapped)
       for vmapped in (True, False)}
print(json.dumps([jax.device_count(), out]))
"""


def test_trials_over_two_devices_match_one_device(digits, tfds_data_dir, run_python):
  """Vmapped (the trials' axis split over the devices) and one trial per device at a time (3
  trials: a pair, then one alone): the same results as on one device, each in its trial's
  place."""
  import json  # pylint: disable=g-import-not-at-top
  hparams = HPARAMS + [{**HPARAMS[0], "learning_rate": 1e-2}]
  done = run_python("-c", _TWO_DEVICES, tfds_data_dir, json.dumps(hparams),
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert done.returncode == 0, done.stderr[-3000:]
  devices, out = json.loads(done.stdout.strip().splitlines()[-1])
  one = trials.run_trials(digits, submission.from_zoo("adamw"), hparams, [3, 4, 5],
                          vmapped=False)
  assert devices == 2
  for vmapped, two in out.items():
    assert [r["vmapped"] for r in two] == [vmapped == "True"] * 3
    assert [(r["hparams"], r["seed"]) for r in two] == [(r["hparams"], r["seed"]) for r in one]
    np.testing.assert_allclose([r["eval_metric"] for r in two], [r["eval_metric"] for r in one],
                               atol=1e-6)
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one],
                               rtol=1e-5)
  assert len({tuple(r["train_loss"]) for r in one}) == 3  # the trials differ
