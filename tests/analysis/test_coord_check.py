"""Coordinate check on real mnist5k digits: muP keeps every layer's scale across width, SP does not
(issue 3's acceptance at CI size: MLP widths 64 -> 512, Adam, step 3)."""

import numpy as np
import optax
import pytest

from jaxlab import data, models, optim, param
from jaxlab.analysis import coord_check
from jaxlab.train import tasks
from jaxlab.train.init import param_info_of
from jaxlab.models.context import LayerContext

BASE, WIDE = 64, 512
# At 1e-2 the wide SP net is already unstable (logits x9 at step 1, then collapse); at 1e-3 muP's
# logits at step 3 still carry the 1/sqrt(m) init term (ratio 0.7). 3e-3: updates dominate, SP stable.
LR = 3e-3


def _batch(data_dir):
  cfg = {"name": "mnist5k", "data_dir": data_dir, "task": "classification"}
  return next(data.make_train_iterator(cfg, batch_size=256, seed=0))


def _build(name):
  def build(width):
    p = param.get(name, base_width=BASE).resolve(width)
    model = models.MLP(hidden_widths=(width, width), num_classes=10,
                       ctx=LayerContext(parametrization=p))
    info = param_info_of(model, np.zeros((1, 28, 28, 1), np.float32))
    return model, optax.chain(optax.adam(LR), optim.scale_by_parametrization(p, info, "adam"))
  return build


@pytest.fixture(scope="module")
def results(tfds_data_dir):
  batch = _batch(tfds_data_dir)
  return {name: coord_check(_build(name), (BASE, WIDE), batch, tasks.CLASSIFICATION, steps=3)
          for name in ("sp", "mup")}


def _ratios(history_by_width, step):
  small, wide = history_by_width[BASE][step], history_by_width[WIDE][step]
  return {k: wide[k] / small[k] for k in small}


def test_mup_every_layer_stable_across_width(results):
  ratios = _ratios(results["mup"], step=3)
  assert set(ratios) >= {"dense_0", "dense_1", "readout", "logits"}
  for layer, r in ratios.items():
    assert 1 / 1.3 < r < 1.3, (layer, r)


def test_sp_logits_blow_up_with_width(results):
  assert _ratios(results["sp"], step=3)["logits"] > 2.0


def test_mup_equals_sp_at_base_width(results):
  assert results["mup"][BASE] == results["sp"][BASE]  # same init bits, same updates at m = 1
