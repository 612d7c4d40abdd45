"""Depth diagnostics against independent recomputations on a tiny TransformerLM: blocks applied
by hand, angular distances and grad norms in numpy, removal = a shallower model."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.analysis import depth_diagnostics as dd
from jaxlab.param import roles
from jaxlab.train import tasks

V, D, LAYERS, HEADS = 32, 16, 3, 2
TOKENS = np.random.default_rng(0).integers(0, V, (2, 9))
BATCH = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}


def _lm(num_layers=LAYERS):
  return models.TransformerLM(vocab_size=V, d_model=D, num_layers=num_layers, num_heads=HEADS,
                              max_len=16)


@functools.lru_cache(maxsize=None)
def _params():
  """SP-like random params drawn in numpy from the model's ParamInfo (no init compile)."""
  boxed = jax.eval_shape(_lm().init, jax.random.PRNGKey(1), BATCH["inputs"])["params"]
  rng = np.random.default_rng(1)

  def draw(i, shape):
    if i.role == roles.NORM:
      return jnp.asarray(1 + 0.1 * rng.standard_normal(shape.shape), jnp.float32)
    return jnp.asarray(rng.standard_normal(shape.shape) / np.sqrt(i.fan_in), jnp.float32)

  return jax.tree.map(draw, param.param_info(boxed), param.unbox(boxed),
                      is_leaf=lambda x: isinstance(x, param.ParamInfo))


def _loss(logits, batch):
  return tasks.LM.loss(logits, batch)


@functools.lru_cache(maxsize=None)
def _manual_stream():
  """x^(0..L) by applying Block modules by hand (the LM's own block settings)."""
  @jax.jit
  def stream(params):
    x = jnp.take(params["embed"]["embedding"], BATCH["inputs"], axis=0)
    xs = [x]
    for i in range(LAYERS):
      block = models.Block(HEADS, LAYERS, layer=i, mlp_ratio=4, causal=True, rope=True,
                           norm="layernorm", activation="gelu_tanh", use_bias=False)
      x = block.apply({"params": params[f"block_{i}"]}, x)
      xs.append(x)
    return xs
  return [np.asarray(x, np.float64) for x in stream(_params())]


def _f32_atol(want, reduction: int = 4 * D) -> float:
  """Absolute tolerance between two float32 evaluations of the same blocks that differ only in
  the order of operations (one program vs block by block; AVX2 vs AVX-512 reduction orders): a
  few ulps of the tensor's scale, growing like sqrt(reduction length) (rounding errors add as a
  random walk; the longest reduction here is the MLP's 4 D). A wrong block is off by O(scale)."""
  return 4 * np.finfo(np.float32).eps * np.sqrt(reduction) * float(np.max(np.abs(want)))


def test_block_outputs_and_variance_match_manual_blocks():
  xs = _manual_stream()
  outs = dd.block_outputs(_lm(), _params(), BATCH["inputs"])
  assert len(outs) == LAYERS
  for got, want in zip(outs, xs[1:]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=_f32_atol(want))
  var = jax.jit(lambda p, x: dd.block_output_variance(_lm(), p, x))(_params(), BATCH["inputs"])
  want = np.array([np.var(x) for x in xs[1:]])
  np.testing.assert_allclose(var["variance"], want, rtol=1e-5)
  np.testing.assert_allclose(var["last_first_ratio"], want[-1] / want[0], rtol=1e-5)


def test_residual_stream_and_angular_distance_by_hand():
  xs = _manual_stream()
  stream = dd.residual_stream(_lm(), _params(), BATCH["inputs"])
  assert stream.shape == (LAYERS + 1, *xs[0].shape)
  for got, want in zip(stream, xs):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=_f32_atol(want))
  for n in (1, 2, 3):
    got = dd.angular_distance(_lm(), _params(), BATCH["inputs"], n)
    want = []
    for l in range(LAYERS - n + 1):
      a, b = xs[l].reshape(-1, D), xs[l + n].reshape(-1, D)
      cos = [np.dot(u, w) / np.linalg.norm(u) / np.linalg.norm(w) for u, w in zip(a, b)]
      want.append(np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all((np.asarray(got) > 0) & (np.asarray(got) < 1))
  with pytest.raises(ValueError, match="n must be"):
    dd.angular_distance(_lm(), _params(), BATCH["inputs"], LAYERS + 1)


def test_per_layer_grad_norms_match_numpy():
  rng = np.random.default_rng(2)
  grads = {k: jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * (1 + j),
                                                 jnp.float32), sub)
           for j, (k, sub) in enumerate(_params().items())}  # per-block scales differ
  got = dd.per_layer_grad_norms(grads)
  norms = np.array([np.sqrt(sum(np.sum(np.asarray(g, np.float64)**2)
                                for g in jax.tree.leaves(grads[f"block_{i}"])))
                    for i in range(LAYERS)])
  np.testing.assert_allclose(got["norms"], norms, rtol=1e-5)
  np.testing.assert_allclose(got["max_min_ratio"], norms.max() / norms.min(), rtol=1e-5)
  np.testing.assert_allclose(got["cv"], norms.std() / norms.mean(), rtol=1e-4)


def test_layer_removal_equals_a_shallower_model():
  params = _params()
  got = dd.layer_removal_loss_delta(_lm(), params, BATCH, _loss)
  base = _loss(_lm().apply({"params": params}, BATCH["inputs"]), BATCH)
  np.testing.assert_allclose(got["base_loss"], base, rtol=1e-6)
  for removed in range(LAYERS):
    kept = [i for i in range(LAYERS) if i != removed]
    short = {k: v for k, v in params.items() if not k.startswith("block_")}
    short.update({f"block_{j}": params[f"block_{i}"] for j, i in enumerate(kept)})
    loss = _loss(_lm(LAYERS - 1).apply({"params": short}, BATCH["inputs"]), BATCH)
    np.testing.assert_allclose(got["loss_delta"][removed], loss - base, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(got["loss_delta"]) != 0)
  with pytest.raises(ValueError, match="no key 'image'"):
    dd.layer_removal_loss_delta(_lm(), params, BATCH, _loss, inputs_key="image")


def test_depth_metrics_row_is_json_and_models_without_blocks_fail_clearly():
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  row = dd.depth_metrics(_lm(), params, BATCH["inputs"], grads=grads, n=2)
  assert {f"depth/block_var/block_{i}" for i in range(LAYERS)} <= set(row)
  assert {"depth/block_var_last_first", "depth/grad_norm_max_min", "depth/grad_norm_cv",
          "depth/angular_distance_n2/block_1", "depth/grad_norm/block_2"} <= set(row)
  assert "depth/angular_distance_n2/block_2" not in row
  json.dumps({k: float(v) for k, v in row.items()})
  mlp = models.MLP(hidden_widths=(8,), num_classes=3)
  x = np.zeros((2, 4), np.float32)
  mlp_params = param.unbox(mlp.init(jax.random.PRNGKey(0), x)["params"])
  with pytest.raises(ValueError, match="block_0"):
    dd.block_output_variance(mlp, mlp_params, x)
  with pytest.raises(ValueError, match="block_0"):
    dd.per_layer_grad_norms(mlp_params)
