"""ConvNeXt: shapes, metadata, the depthwise conv and residual hooks, fitting a batch, build()."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
from jax import lax

from jaxlab.configs import mnist5k_convnext, mnist5k_resnet
from jaxlab import models, param
from jaxlab.errors import UserError
from jaxlab.models.convnext import ConvNeXtBlock
from jaxlab.models.depthwise import DepthwiseConv
from jaxlab.param import roles
from jaxlab.models.context import LayerContext
from tests.models.fitting import KEY, fit

IMAGES = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 4, 16)


def _tiny(**kw):
  kw = dict(widths=(4, 8), depths=(1, 2), kernel_size=3, patch_size=2, num_classes=5) | kw
  return models.ConvNeXt(**kw)


@pytest.mark.parametrize("shape,patch,stages", [
    ((2, 28, 28, 1), 2, 2), ((2, 28, 28, 1), 4, 2), ((2, 8, 8, 3), 2, 3), ((2, 32, 32, 3), 4, 3)])
def test_output_shape(shape, patch, stages):
  model = _tiny(widths=(4, 8, 16)[:stages], depths=(1,) * stages, patch_size=patch,
                kernel_size=7)
  x = np.zeros(shape, np.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert set(variables) == {"params"}
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)


def test_metadata():
  boxed = jax.eval_shape(_tiny(kernel_size=7).init, KEY, np.zeros((1, 8, 8, 3)))["params"]
  info = param.param_info(boxed)
  assert sorted(info) == ["downsample_1", "downsample_1_norm", "final_norm", "readout",
                          "stage_0_block_0", "stage_1_block_0", "stage_1_block_1", "stem",
                          "stem_norm"]
  conv_axes = ("kernel_h", "kernel_w", "conv_in", "conv_out")
  assert info["stem"]["kernel"][:4] == (roles.INPUT, 12, 4, conv_axes)
  assert info["downsample_1"]["kernel"][:4] == (roles.HIDDEN, 16, 8, conv_axes)
  block = info["stage_1_block_1"]
  assert block["dwconv"]["kernel"][:4] == (roles.INPUT, 49, 8, ("kernel_h", "kernel_w", "conv_out"))
  assert block["dwconv"]["bias"][:4] == (roles.BIAS, 1, 8, ("conv_out",))
  assert block["norm"]["scale"][:4] == (roles.NORM, 8, 8, ("conv_out",))
  assert block["mlp"]["up"]["kernel"][:4] == (roles.HIDDEN, 8, 32, ("embed", "mlp"))
  assert block["mlp"]["down"]["kernel"][:4] == (roles.HIDDEN, 32, 8, ("mlp", "embed"))
  assert block["layer_scale"][:4] == (roles.NORM, 8, 8, ("conv_out",))
  assert info["readout"]["kernel"][:4] == (roles.READOUT, 8, 5, ("conv_out", "classes"))
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(boxed))))
  block = ConvNeXtBlock(kernel_size=3, layer_scale_init=0.25)
  gamma = param.unbox(block.init(KEY, np.zeros((1, 2, 2, 4), np.float32)))["params"]["layer_scale"]
  np.testing.assert_array_equal(gamma, np.full(4, 0.25, np.float32))
  assert "layer_scale" not in jax.eval_shape(_tiny(layer_scale_init=0.0).init, KEY,
                                             IMAGES[:1])["params"]["stage_0_block_0"]


def test_depthwise_conv_is_same_padded_cross_correlation():
  x = np.random.default_rng(2).standard_normal((2, 6, 5, 3)).astype(np.float32)
  layer = DepthwiseConv((3, 3), use_bias=False)
  params = param.unbox(layer.init(KEY, x)["params"])
  w = np.asarray(params["kernel"])
  ref = lax.conv_general_dilated(x, w[:, :, None, :], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=3, precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(layer.apply({"params": params}, x), ref, rtol=1e-5, atol=1e-5)
  interpret = DepthwiseConv((3, 3), use_bias=False, implementation="pallas_interpret")
  np.testing.assert_allclose(interpret.apply({"params": params}, x), ref, rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class NoResidual(param.Parametrization):
  """Residual branches multiplied by 0: every block is the identity."""

  def residual_multiplier(self, num_layers):
    return 0.0


def test_residual_multiplier_applied():
  """With every branch multiplied by 0 the blocks' parameters do not matter; under SP they do."""
  kw = dict(widths=(4,), depths=(2,), layer_scale_init=1.0)
  model = _tiny(ctx=LayerContext(parametrization=NoResidual()), **kw)
  x = IMAGES[:4, :4, :4]
  params = param.unbox(model.init(KEY, x))["params"]
  bumped = dict(params, **{k: jax.tree.map(lambda v: v + 1.0, params[k])
                           for k in ("stage_0_block_0", "stage_0_block_1")})
  np.testing.assert_allclose(model.apply({"params": params}, x),
                             model.apply({"params": bumped}, x), rtol=1e-6, atol=1e-6)
  sp = _tiny(**kw)
  assert np.abs(sp.apply({"params": params}, x) - sp.apply({"params": bumped}, x)).max() > 1e-3


def test_adam_fits_fixed_batch():
  model = _tiny(widths=(8, 16), depths=(1, 1), num_classes=4)
  first, last = fit(model, IMAGES, LABELS, steps=20, lr=1e-2)
  assert first > 0.7 * np.log(4) and last < 0.3 * first, (first, last)


def test_build_and_errors():
  cfg = ml_collections.ConfigDict(dict(name="convnext", widths=[8, 16], depths=[1, 1],
                                       kernel_size=5, patch_size=4, num_classes=3))
  assert models.build(cfg) == models.ConvNeXt(widths=(8, 16), depths=(1, 1), kernel_size=5,
                                              patch_size=4, num_classes=3)
  assert models.ConvNeXt.width_of(cfg) == 8 and models.ConvNeXt.depth_of(cfg) == 2
  assert models.ConvNeXt.with_width(cfg, 16) == {"widths": (16, 32)}
  with pytest.raises(UserError, match="equal length"):
    jax.eval_shape(_tiny(depths=(1,)).init, KEY, IMAGES[:1])
  with pytest.raises(UserError, match="not divisible by patch_size"):
    jax.eval_shape(_tiny(patch_size=3).init, KEY, IMAGES[:1])
  with pytest.raises(UserError, match="too small"):
    jax.eval_shape(_tiny(widths=(4, 8, 16, 32), depths=(1,) * 4).init, KEY, IMAGES[:1])


def test_shipped_config_builds_near_resnet_size():
  c = mnist5k_convnext.get_config()
  model = models.build(c.model)
  x = np.zeros((1, 28, 28, 1), np.float32)
  n = models.num_params(jax.eval_shape(model.init, KEY, x)["params"])
  resnet = models.build(mnist5k_resnet.get_config().model)
  resnet = models.num_params(jax.eval_shape(resnet.init, KEY, x)["params"])
  assert 0.8 < n / resnet < 1.25, (n, resnet)
  assert jax.eval_shape(model.apply, jax.eval_shape(model.init, KEY, x), x).shape == (1, 10)
