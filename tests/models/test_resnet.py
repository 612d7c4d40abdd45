"""ResNet: shapes on MNIST/tiny/CIFAR-sized inputs, metadata, purity, and fitting a batch."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.errors import UserError
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
  assert info["stem"]["kernel"][:4] == (roles.INPUT, 27, 4, conv_axes)
  assert info["stage_0_block_0"]["conv_0"]["kernel"][:4] == (roles.HIDDEN, 36, 4, conv_axes)
  assert info["stage_1_block_0"]["conv_0"]["kernel"][:4] == (roles.HIDDEN, 36, 8, conv_axes)
  assert info["stage_1_block_0"]["proj"]["kernel"][:4] == (roles.HIDDEN, 4, 8, conv_axes)
  assert info["stage_2_block_1"]["conv_1"]["kernel"][:4] == (roles.HIDDEN, 144, 16, conv_axes)
  assert "proj" not in info["stage_0_block_0"] and "proj" not in info["stage_2_block_1"]
  assert info["stage_2_block_1"]["norm_1"]["scale"][:4] == (roles.NORM, 16, 16, ("conv_out",))
  assert info["readout"]["kernel"][:4] == (roles.READOUT, 16, 7, ("conv_out", "classes"))
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
  with pytest.raises(UserError, match="'depth'"):
    models.build(ml_collections.ConfigDict(dict(name="resnet", depth=20)))


def test_depth_keys_metadata_and_build():
  """Fixup adds scalar biases (role BIAS) and a multiplier (NORM); SkipInit a scalar gain (NORM);
  conv='ws' a per-channel gain (NORM) on every conv; the defaults add nothing."""
  x = np.zeros((1, 8, 8, 3))
  default = jax.eval_shape(models.ResNet(width=4, blocks_per_stage=1).init, KEY, x)["params"]
  assert set(default["stage_0_block_0"]) == {"conv_0", "norm_0", "conv_1", "norm_1"}
  model = models.ResNet(width=4, blocks_per_stage=1, norm="none", init_scheme="fixup",
                        branch_gain="rezero")
  info = param.param_info(jax.eval_shape(model.init, KEY, x)["params"])
  block = info["stage_1_block_0"]
  assert block["bias_0a"]["bias"][:4] == (roles.BIAS, 1, 1, ())
  assert block["multiplier"]["scale"][:4] == (roles.NORM, 1, 1, ())
  assert block["branch_gain"]["scale"][:4] == (roles.NORM, 1, 1, ())
  assert "proj_norm" not in block and "norm_1" not in block
  assert info["readout_bias"]["bias"].role == roles.BIAS
  ws = param.param_info(jax.eval_shape(models.ResNet(width=4, blocks_per_stage=1, conv="ws").init,
                                       KEY, x)["params"])
  assert ws["stage_1_block_0"]["conv_1"]["gain"][:4] == (roles.NORM, 8, 8, ("conv_out",))
  cfg = ml_collections.ConfigDict(dict(name="resnet", width=8, blocks_per_stage=1, norm="none",
                                       conv="ws", init_scheme="default", branch_gain="rezero"))
  assert models.build(cfg) == models.ResNet(width=8, blocks_per_stage=1, norm="none", conv="ws",
                                            branch_gain="rezero")


def test_residual_add_goes_through_the_parametrization():
  """The blocks add their branch through parametrization.residual (issue 17, item 6: u-muP's
  weighted add was skipped): a parametrization whose residual keeps only the shortcut cuts every
  branch out of the function, so the branch convs get no gradient while the projection does;
  under u-muP the output differs from the plain x + branch(x) model with the same weights."""
  import dataclasses
  import jax.numpy as jnp
  from jaxlab.models.context import LayerContext

  @dataclasses.dataclass(frozen=True)
  class ShortcutOnly(param.SP):
    def residual(self, x, branch, *, shortcut=None, **kw):
      branch(x)  # create the branch's parameters
      return x if shortcut is None else shortcut(x)

  x = jax.random.normal(KEY, (2, 8, 8, 1))
  model = models.ResNet(width=4, blocks_per_stage=1, ctx=LayerContext(ShortcutOnly()))
  params = param.unbox(model.init(KEY, x))
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)["params"]
  block = grads["stage_1_block_0"]
  assert float(jnp.abs(block["conv_0"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(block["conv_1"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(block["proj"]["kernel"]).max()) > 0.0

  umup = param.get("umup").resolve(4, 3)
  weighted = models.ResNet(width=4, blocks_per_stage=1, ctx=LayerContext(umup))
  w = param.unbox(weighted.init(KEY, x))

  @dataclasses.dataclass(frozen=True)  # u-muP's ops with SP's plain residual add
  class UMuPPlainAdd(type(umup)):
    def residual(self, x, branch, *, shortcut=None, **kw):
      return param.SP.residual(self, x, branch, shortcut=shortcut, **kw)

  plain = models.ResNet(width=4, blocks_per_stage=1,
                        ctx=LayerContext(UMuPPlainAdd().resolve(4, 3)))
  assert not np.allclose(weighted.apply(w, x), plain.apply(w, x))
