"""train_seeds gives the same runs vmapped in one scan and one after the other in chunks."""

import jax
import numpy as np
import optax

from jaxlab import models
from jaxlab.analysis.seed_runs import train_seeds
from jaxlab.train import core, tasks


def test_vmapped_and_chunked_seeds_agree():
  rng = np.random.default_rng(1)
  batches = {"image": rng.normal(size=(3, 6, 8, 12)).astype(np.float32),  # [S, T, B, D]
             "label": rng.integers(0, 4, size=(3, 6, 8)).astype(np.int32)}
  model = models.MLP(hidden_widths=(16,), num_classes=4)
  tx = optax.sgd(0.1)
  vmapped = train_seeds(model, tx, tasks.CLASSIFICATION, [0, 1, 2], batches)
  chunked = train_seeds(model, tx, tasks.CLASSIFICATION, [0, 1, 2], batches, chunk=4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               vmapped, chunked)
  init0 = core.init_params_and_extra(model, jax.random.PRNGKey(0), batches["image"][0, 0])[0]
  first = jax.tree.leaves(jax.tree.map(lambda x: x[0], vmapped))
  assert not any(np.allclose(a, b) for a, b in zip(first, jax.tree.leaves(init0)))  # trained
  # Fine-tuning from init: the seed no longer matters, only the data does.
  same_data = jax.tree.map(lambda x: np.stack([x[0], x[0]]), batches)
  for chunk in (0, 4):
    fine = train_seeds(model, tx, tasks.CLASSIFICATION, [0, 7], same_data, init=init0, chunk=chunk)
    jax.tree.map(lambda x: np.testing.assert_allclose(x[0], x[1], rtol=1e-6), fine)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.tree.map(lambda x: x[0], fine), jax.tree.map(lambda x: x[0], vmapped))
