"""LayerContext: one hashable object carrying parametrization, quant policy and dtypes; the
compute dtype reaches every layer, params stay in param_dtype; bad dtype keys are one-line
UserErrors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.errors import UserError
from jaxlab.models.context import LayerContext, dtype_of
from jaxlab.train.init import build_model

KEY = jax.random.key(0)
IMAGE = np.ones((2, 8, 8, 1), np.float32)
TOKENS = np.ones((2, 8), np.int32)
CASES = [(dict(name="mlp", hidden_widths=(8, 8), num_classes=3), IMAGE),
         (dict(name="resnet", width=4, blocks_per_stage=1), IMAGE),
         (dict(name="vit", dim=8, depth=1, num_heads=2, pool="cls"), IMAGE),
         (dict(name="convnext", widths=(4, 8), depths=(1, 1), kernel_size=3), IMAGE),
         (dict(name="transformer", d_model=8, num_layers=1, num_heads=2, max_len=8,
               positional="learned"), TOKENS),
         (dict(name="longconv", d_model=8, num_layers=1, max_len=8, kernel_dim=4), TOKENS)]


def test_context_is_hashable_and_normalises_dtypes():
  a, b = LayerContext(dtype="bfloat16"), LayerContext(dtype=jnp.bfloat16)
  assert a == b and hash(a) == hash(b) and a.dtype == jnp.bfloat16
  assert LayerContext() == LayerContext(param.SP(), dtype="float32", param_dtype="float32")


@pytest.mark.parametrize("cfg,x", CASES)
def test_bf16_compute_with_f32_params(cfg, x):
  model = models.build(cfg, dtype="bfloat16")
  variables = jax.jit(model.init)(KEY, x)
  assert {v.dtype for v in jax.tree.leaves(param.unbox(variables))} == {jnp.dtype("float32")}
  y = jax.jit(model.apply)(variables, x)
  assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))


def test_bf16_params():
  model = models.build(CASES[0][0], dtype="bfloat16", param_dtype="bfloat16")
  leaves = jax.tree.leaves(param.unbox(jax.jit(model.init)(KEY, IMAGE)))
  assert {v.dtype for v in leaves} == {jnp.dtype("bfloat16")}


def test_dtype_errors_name_the_key():
  with pytest.raises(UserError, match=r"config\.dtype='float16'; valid: float32, bfloat16"):
    dtype_of("float16", "config.dtype")
  with pytest.raises(UserError, match=r"config\.model\.dtype is now config\.dtype"):
    models.build(dict(name="mlp", hidden_widths=(8,), num_classes=3, dtype="bfloat16"))
  c = ml_collections.ConfigDict(dict(model=dict(name="mlp", hidden_widths=(8,), num_classes=3),
                                     param=dict(name="sp"), quant="fp32", param_dtype="int8"))
  spec = ml_collections.ConfigDict(dict(task="classification"))
  with pytest.raises(UserError, match=r"config\.param_dtype='int8'; valid: float32, bfloat16"):
    build_model(c, spec)
