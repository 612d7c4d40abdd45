"""Workloads: every one loads at toy size, its overrides reach the config, and the validation
metric masks the padding."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.algoperf import workloads
from jaxlab.errors import UserError


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_every_workload_loads(name, tfds_data_dir):
  w = workloads.get(name)
  wd = workloads.load(w, tfds_data_dir, num_steps=3, batch_size=4)
  config = w.config(tfds_data_dir)
  for key, value in w.overrides.items():
    node = config
    for part in key.split("."):
      node = node[part]
    assert node == value, key
  targets = wd.train_batches[wd.task.targets_key]
  assert targets.shape[:2] == (3, 4)
  assert wd.eval_batch[wd.task.targets_key].shape[0] == w.eval_examples
  assert wd.convolves == (name in ("mnist5k_resnet", "mnist5k_vit"))  # ViT patchifies by conv
  assert w.metric in ("error_rate", "loss") and w.target > 0 and w.num_steps % w.eval_every == 0


def test_metric_counts_real_examples_only():
  sums = {"loss": jnp.float32(6.0), "correct": jnp.float32(3.0), "count": jnp.float32(4.0)}
  assert float(workloads.validation_metric("error_rate", sums)) == 0.25
  assert float(workloads.validation_metric("loss", sums)) == 1.5
  with pytest.raises(UserError, match="'top5'.*error_rate, loss"):
    workloads.validation_metric("top5", sums)


def test_relaxed_target_and_unknown_name():
  np.testing.assert_allclose(workloads.relaxed_target("error_rate", 0.05), 0.055, rtol=1e-6)
  np.testing.assert_allclose(workloads.relaxed_target("loss", 2.0), 2.04, rtol=1e-6)
  with pytest.raises(UserError, match="unknown workload 'imagenet'.*digits_mlp"):
    workloads.get("imagenet")
