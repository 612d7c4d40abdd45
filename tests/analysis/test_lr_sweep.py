"""The vmapped sweep equals independent single runs, and it finds a sensible optimum."""

import numpy as np
import optax
import pytest

from jaxlab import data, models
from jaxlab.analysis import lr_sweep, make_sweep, stack_batches
from jaxlab.train import tasks


@pytest.fixture(scope="module")
def batches(tfds_data_dir):
  cfg = {"name": "digits", "data_dir": tfds_data_dir, "task": "classification"}
  it = data.make_train_iterator(cfg, batch_size=64, seed=0)
  return stack_batches(it, 20), next(data.eval_batches(cfg, batch_size=359))


def test_vmapped_lanes_equal_separate_runs(batches):
  train, evals = batches
  model = models.MLP(hidden_widths=(32,), num_classes=10)
  lrs, seeds = [1e-3, 1e-2, 1e-1], [0, 1]
  both = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(np.array(lrs, np.float32),
                                                          np.array(seeds, np.uint32), train, evals)
  for i, lr in enumerate(lrs):
    for j, seed in enumerate(seeds):
      single = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(
          np.array([lr], np.float32), np.array([seed], np.uint32), train, evals)
      np.testing.assert_allclose(both[0][i, j], single[0][0, 0], rtol=2e-5, atol=2e-6)
      np.testing.assert_allclose(both[1][i, j], single[1][0, 0], rtol=2e-5, atol=2e-6)


def test_sweep_picks_an_interior_learning_rate(batches):
  train, evals = batches
  lrs = [2.0**k for k in range(-14, 3, 2)]  # 6e-5 ... 4
  out = lr_sweep(models.MLP(hidden_widths=(64,), num_classes=10), optax.adam, tasks.CLASSIFICATION,
                 lrs, [0], train, evals)
  assert out["train_loss"].shape == (len(lrs), 1, 20)
  assert lrs[0] < out["best_lr"] < lrs[-1]  # tiny LRs barely move, huge ones diverge
  assert not np.isfinite(out["eval_loss"][-1, 0]) or out["eval_loss"][-1, 0] > out["eval_loss"].min()
