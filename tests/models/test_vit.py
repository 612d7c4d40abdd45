"""ViT: shapes for both poolings and patch sizes, metadata, and fitting a batch."""

import dataclasses

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



def _fit(model, x, y, steps=25, lr=3e-3):
  return fit(model, x, y, steps, lr)


@pytest.mark.parametrize("patch,shape,pool", [
    (4, (2, 8, 8, 1), "mean"), (7, (2, 28, 28, 1), "cls"), (4, (2, 32, 32, 3), "cls")])
def test_output_shape(patch, shape, pool):
  model = models.ViT(patch_size=patch, dim=16, depth=2, num_heads=2, num_classes=5, pool=pool)
  x = np.zeros(shape, np.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)
  num_tokens = (shape[1] // patch) ** 2 + (pool == "cls")
  assert variables["params"]["pos_embed"]["embedding"].value.shape == (num_tokens, 16)


def test_metadata():
  model = models.ViT(patch_size=4, dim=16, depth=2, num_heads=2, num_classes=5, pool="cls")
  boxed = jax.eval_shape(model.init, KEY, np.zeros((1, 8, 8, 3)))["params"]
  info = param.param_info(boxed)
  assert info["patch_embed"]["kernel"][:4] == (
      roles.INPUT, 48, 16, ("kernel_h", "kernel_w", "conv_in", "embed"))
  assert info["cls"][:4] == (roles.INPUT, 1, 16, ("embed",))
  assert info["pos_embed"]["embedding"][:4] == (roles.INPUT, 5, 16, ("position", "embed"))
  assert info["block_1"]["attn"]["qkv"]["kernel"][:4] == (roles.HIDDEN, 16, 48, ("embed", "heads"))
  assert info["block_1"]["attn"]["qkv"]["bias"].role == roles.BIAS
  assert info["final_norm"]["scale"].role == roles.NORM
  assert info["readout"]["kernel"][:4] == (roles.READOUT, 16, 5, ("embed", "classes"))
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(boxed))))


def test_adam_fits_fixed_batch():
  model = models.ViT(patch_size=4, dim=32, depth=2, num_heads=4, num_classes=4, pool="cls")
  first, last = _fit(model, IMAGES, LABELS)
  assert first > 0.7 * np.log(4) and last < 0.3 * first, (first, last)


def test_build_and_errors():
  cfg = ml_collections.ConfigDict(dict(name="vit", patch_size=7, dim=32, depth=3, num_heads=4,
                                       num_classes=10, pool="mean"))
  assert models.build(cfg) == models.ViT(patch_size=7, dim=32, depth=3, num_heads=4,
                                         num_classes=10)
  with pytest.raises(UserError, match="not divisible"):
    jax.eval_shape(models.ViT(patch_size=3).init, KEY, np.zeros((1, 8, 8, 1)))
  with pytest.raises(UserError, match="unknown pool"):
    jax.eval_shape(models.ViT(pool="max").init, KEY, np.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize("placement", ["post", "peri", "mix", "lns", "deepnorm", "none"])
def test_norm_placements(placement):
  model = models.ViT(patch_size=4, dim=16, depth=2, num_heads=2, num_classes=5,
                     block_options=models.BlockOptions(norm_placement=placement, mix_ratio=0.5))
  x = np.zeros((2, 8, 8, 1), np.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)
  params = variables["params"]
  assert ("final_norm" in params) == (placement not in ("post", "deepnorm"))
  post = {"post": [0, 1], "deepnorm": [0, 1], "mix": [0]}.get(placement, [])
  assert [i for i in range(2) if "attn_post_norm" in params[f"block_{i}"]] == post
  assert ("attn_out_norm" in params["block_1"]) == (placement == "peri")


def test_depth_keys_train_and_errors():
  options = models.BlockOptions(norm_placement="peri", branch_gain="rezero", init_scheme="lir")
  model = models.ViT(patch_size=4, dim=32, depth=2, num_heads=4, num_classes=4, pool="cls",
                     block_options=options)
  first, last = _fit(model, IMAGES, LABELS, steps=5)
  assert np.isfinite(last) and last < first, (first, last)
  mimetic = model.clone(block_options=dataclasses.replace(options, attention_init="mimetic"))
  assert jax.eval_shape(mimetic.init, KEY, IMAGES)["params"]["block_1"]["attn_gain"] is not None
  with pytest.raises(UserError, match=r"config\.model\.norm_placement 'sandwich'"):
    sandwich = models.BlockOptions(norm_placement="sandwich")
    jax.eval_shape(models.ViT(block_options=sandwich).init, KEY, np.zeros((1, 8, 8, 1)))
