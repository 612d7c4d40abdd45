"""ResNet: shapes on MNIST/tiny/CIFAR-sized inputs, metadata, purity, and fitting a batch."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.param import roles
from tests.models.fitting import KEY, fit

IMAGES = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 4, 16)



@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 8, 8, 1), (2, 32, 32, 3)])
def test_output_shape(shape):
  model = models.ResNet(width=4, blocks_per_stage=2, num_classes=7)
  x = np.zeros(shape, np.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert set(variables) == {"params"}  # no batch_stats: the train step stays pure
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 7)


def test_metadata():
  model = models.ResNet(width=4, blocks_per_stage=2, num_classes=7)
  boxed = jax.eval_shape(model.init, KEY, np.zeros((1, 8, 8, 3)))["params"]
  info = param.param_info(boxed)
  blocks = sorted(k for k in info if k.startswith("stage_"))
  assert len(blocks) == 6  # depth 6n + 2 = 14
  conv_axes = ("kernel_h", "kernel_w", "conv_in", "conv_out")
  assert info["stem"]["kernel"] == (roles.INPUT, 27, 4, conv_axes)
  assert info["stage_0_block_0"]["conv_0"]["kernel"] == (roles.HIDDEN, 36, 4, conv_axes)
  assert info["stage_1_block_0"]["conv_0"]["kernel"] == (roles.HIDDEN, 36, 8, conv_axes)
  assert info["stage_1_block_0"]["proj"]["kernel"] == (roles.HIDDEN, 4, 8, conv_axes)
  assert info["stage_2_block_1"]["conv_1"]["kernel"] == (roles.HIDDEN, 144, 16, conv_axes)
  assert "proj" not in info["stage_0_block_0"] and "proj" not in info["stage_2_block_1"]
  assert info["stage_2_block_1"]["norm_1"]["scale"] == (roles.NORM, 16, 16, ("conv_out",))
  assert info["readout"]["kernel"] == (roles.READOUT, 16, 7, ("conv_out", "classes"))
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(boxed))))


def test_adam_fits_fixed_batch():
  first, last = fit(models.ResNet(width=8, blocks_per_stage=1, num_classes=4), IMAGES, LABELS)
  assert first > 0.7 * np.log(4) and last < 0.3 * first, (first, last)


def test_build():
  cfg = ml_collections.ConfigDict(dict(name="resnet", width=8, blocks_per_stage=3,
                                       num_classes=100))
  assert models.build(cfg) == models.ResNet(width=8, blocks_per_stage=3, num_classes=100)
  with pytest.raises(ValueError, match="'depth'"):
    models.build(ml_collections.ConfigDict(dict(name="resnet", depth=20)))
