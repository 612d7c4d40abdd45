"""MLP: shapes, metadata, build(), a numpy reference forward, and that Adam fits a fixed batch."""

import chex
import jax
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.errors import UserError
from jaxlab.param import roles
from tests.models.fitting import KEY, fit

IMAGES = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 10, 32)



def test_shapes_and_metadata():
  model = models.MLP(hidden_widths=(16, 12), num_classes=10)
  variables = jax.jit(model.init)(KEY, IMAGES[:2])
  assert set(variables) == {"params"}
  assert model.apply(variables, IMAGES[:3]).shape == (3, 10)
  info = param.param_info(variables["params"])
  assert info["dense_0"]["kernel"][:4] == (roles.INPUT, 64, 16, ("input", "mlp"))
  assert info["dense_1"]["kernel"][:4] == (roles.HIDDEN, 16, 12, ("embed", "mlp"))
  assert info["readout"]["kernel"][:4] == (roles.READOUT, 12, 10, ("embed", "classes"))
  assert info["readout"]["bias"].role == roles.BIAS
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(variables["params"]))) == 6)


def test_other_input_size():
  model = models.MLP(hidden_widths=(8,), num_classes=3)
  x = np.ones((2, 28, 28, 1), np.float32)
  variables = jax.jit(model.init)(KEY, x)
  assert param.param_info(variables["params"])["dense_0"]["kernel"].fan_in == 784
  assert jax.jit(model.apply)(variables, x).shape == (2, 3)


class ReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_forward(self):
    model = models.MLP(hidden_widths=(16,), num_classes=4, activation="tanh")
    p = param.unbox(jax.jit(model.init)(jax.random.key(1, impl="rbg"), IMAGES[:4])["params"])
    logits = self.variant(lambda p, x: model.apply({"params": p}, x))(p, IMAGES[:4])
    h = np.tanh(IMAGES[:4].reshape(4, -1) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
    ref = h @ p["readout"]["kernel"] + p["readout"]["bias"]
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


def test_adam_fits_fixed_batch():
  first, last = fit(models.MLP(hidden_widths=(64, 64), num_classes=10), IMAGES, LABELS)
  assert first > 1.5 and last < 0.3 * first, (first, last)


def test_build():
  cfg = ml_collections.ConfigDict(dict(name="mlp", hidden_widths=[8, 8], num_classes=3,
                                       activation="gelu"))
  model = models.build(cfg)
  assert model == models.MLP(hidden_widths=(8, 8), num_classes=3, activation="gelu")
  with pytest.raises(UserError, match="'widths'.*valid keys: hidden_widths"):
    models.build(ml_collections.ConfigDict(dict(name="mlp", widths=[8], num_classes=3)))
  with pytest.raises(UserError, match="needs keys.*num_classes"):
    models.build(ml_collections.ConfigDict(dict(name="mlp", hidden_widths=[8])))
  with pytest.raises(UserError, match="unknown model"):
    models.build(ml_collections.ConfigDict(dict(name="cnn")))
  with pytest.raises(UserError, match="unknown activation"):
    jax.eval_shape(models.MLP((4,), 2, activation="swoosh").init, KEY, IMAGES)
