"""Pruning masks against sort-based numpy references on real jaxlab models; structured pruning
removes whole units (their outputs are exactly zero in model.apply); keep_masked holds pruned
weights at zero through AdamW training."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, param
from jaxlab.analysis import plots
from jaxlab.param import ParamInfo, roles
from jaxlab.weights import pruning
from tests.plot_checks import figure_problems, png_problems

KEY = jax.random.PRNGKey(0)
IMAGES = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 10, 32)
TOKENS = np.random.default_rng(2).integers(0, 16, (2, 6)).astype(np.int32)


def _init(cfg, x):
  model = models.build(cfg, parametrization=param.get("sp"))
  boxed = jax.jit(model.init)(KEY, x)["params"]
  return model, param.unbox(boxed), param.param_info(boxed)


@pytest.fixture(scope="module")
def mlp():
  return _init({"name": "mlp", "hidden_widths": (16, 12), "num_classes": 10}, IMAGES[:2])


def _named(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _reference_keep(values: np.ndarray, sparsity: float) -> np.ndarray:
  """Keep |w| above the k-th smallest |w| (no ties in random weights), k = round(s * n)."""
  k = int(round(sparsity * values.size))
  if k == 0:
    return np.ones(values.shape, bool)
  return np.abs(values) > np.sort(np.abs(values).ravel())[k - 1]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.95])
def test_magnitude_global_matches_numpy(mlp, sparsity):
  _, params, info = mlp
  masks = _named(pruning.magnitude_masks(params, info, sparsity, scope="global"))
  p = _named(params)
  weights = [k for k in p if k.endswith("['kernel']")]
  assert len(weights) == 3
  everything = np.concatenate([p[k].ravel() for k in weights])
  threshold_keep = _reference_keep(everything, sparsity)
  expected = np.split(threshold_keep, np.cumsum([p[k].size for k in weights])[:-1])
  for k, e in zip(weights, expected):
    np.testing.assert_array_equal(masks[k], e.reshape(p[k].shape), err_msg=k)
  for k in p:
    if k.endswith("['bias']"):
      assert masks[k].all(), k
  assert sum((~masks[k]).sum() for k in weights) == round(sparsity * everything.size)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.95])
def test_magnitude_layerwise_matches_numpy(mlp, sparsity):
  _, params, info = mlp
  masks = _named(pruning.magnitude_masks(params, info, sparsity, scope="layerwise"))
  for k, w in _named(params).items():
    expected = _reference_keep(w, sparsity) if w.ndim >= 2 else np.ones(w.shape, bool)
    np.testing.assert_array_equal(masks[k], expected, err_msg=k)


def test_magnitude_ties_break_by_position():
  info = ParamInfo(roles.HIDDEN, 2, 2, ("embed", "mlp"))
  params = {"a": jnp.array([[1.0, -1.0], [2.0, 1.0]]), "b": jnp.array([[1.0, 3.0], [1.0, 0.5]])}
  infos = {"a": info, "b": info}
  m = pruning.magnitude_masks(params, infos, 0.5, scope="global")
  # |w| = 0.5 first, then the 1s in order a[0,0], a[0,1], a[1,1]: 4 of 8 pruned.
  np.testing.assert_array_equal(m["a"], [[False, False], [True, False]])
  np.testing.assert_array_equal(m["b"], [[True, True], [True, False]])
  m = pruning.magnitude_masks(params, infos, 0.25, scope="layerwise")
  np.testing.assert_array_equal(m["a"], [[False, True], [True, True]])
  np.testing.assert_array_equal(m["b"], [[True, True], [True, False]])


def test_predicate_and_errors(mlp):
  _, params, info = mlp
  masks = pruning.magnitude_masks(params, info, 0.5,
                                  predicate=lambda i: i.role == roles.HIDDEN)
  assert not masks["dense_1"]["kernel"].all()
  assert masks["dense_0"]["kernel"].all() and masks["readout"]["kernel"].all()
  with pytest.raises(ValueError, match="sparsity"):
    pruning.magnitude_masks(params, info, 1.5)
  with pytest.raises(ValueError, match="scope"):
    pruning.magnitude_masks(params, info, 0.5, scope="per_row")
  with pytest.raises(ValueError, match="kind"):
    pruning.structured_masks(params, info, 0.5, kind="blocks")


def test_neurons_removed_outputs_exactly_zero(mlp):
  model, params, info = mlp
  masks = pruning.structured_masks(params, info, 0.5, kind="neurons")
  for name, width in (("dense_0", 16), ("dense_1", 12)):
    w = np.asarray(params[name]["kernel"])
    norms = np.sqrt((w ** 2).sum(0))
    expected = np.ones(width, bool)
    expected[np.argsort(norms)[:width // 2]] = False
    np.testing.assert_array_equal(masks[name]["kernel"], np.broadcast_to(expected, w.shape))
    np.testing.assert_array_equal(masks[name]["bias"], expected)
  assert masks["readout"]["kernel"].all() and masks["readout"]["bias"].all()
  # give every bias a value, so the zero outputs are not just zero-initialised biases
  params = jax.tree.map(lambda x: x + 0.1 if x.ndim == 1 else x, params)
  pruned = pruning.apply_masks(params, masks)
  _, state = model.apply({"params": pruned}, IMAGES, capture_intermediates=True)
  for name in ("dense_0", "dense_1"):
    h = np.asarray(jax.nn.relu(state["intermediates"][name]["__call__"][0]))
    keep = np.asarray(masks[name]["bias"])
    assert np.all(h[:, ~keep] == 0.0)
    assert np.all(np.abs(h[:, keep]).max(0) > 0)  # the kept units still fire


def test_channels_mask_conv_filters_and_following_norm():
  model, params, info = _init({"name": "resnet", "width": 4, "blocks_per_stage": 1,
                               "num_classes": 3}, IMAGES[:2])
  masks = pruning.structured_masks(params, info, 0.5, kind="channels")
  block = "stage_0_block_0"
  w = np.asarray(params[block]["conv_0"]["kernel"])
  expected = np.ones(4, bool)
  expected[np.argsort(np.sqrt((w ** 2).sum((0, 1, 2))))[:2]] = False
  np.testing.assert_array_equal(masks[block]["conv_0"]["kernel"],
                                np.broadcast_to(expected, w.shape))
  np.testing.assert_array_equal(masks[block]["norm_0"]["scale"], expected)
  np.testing.assert_array_equal(masks[block]["norm_0"]["bias"], expected)
  for k in ("stem_norm", "stage_1_block_0/proj_norm"):
    node = masks
    for part in k.split("/"):
      node = node[part]
    assert (~node["scale"]).sum() == node["scale"].size // 2, k
  assert masks["readout"]["kernel"].all()
  params = jax.tree.map(lambda x: x + 0.1 if x.ndim == 1 else x, params)
  pruned = pruning.apply_masks(params, masks)
  _, state = model.apply({"params": pruned}, IMAGES, capture_intermediates=True)
  h = np.asarray(state["intermediates"][block]["norm_0"]["__call__"][0])
  assert np.all(h[..., ~expected] == 0.0)
  assert np.all(np.abs(h[..., expected]).max((0, 1, 2)) > 0)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_heads_zero_whole_heads_of_transformer(kv_heads):
  H, D = 4, 16
  Dh, K = D // H, kv_heads or H
  model, params, info = _init({"name": "transformer", "vocab_size": 16, "d_model": D,
                               "num_layers": 2, "num_heads": H, "num_kv_heads": kv_heads,
                               "use_bias": True, "max_len": 16}, TOKENS)
  masks = pruning.structured_masks(params, info, 0.5, kind="heads", num_heads=H)
  for layer in ("block_0", "block_1"):
    qkv = np.asarray(params[layer]["attn"]["qkv"]["kernel"])
    assert qkv.shape == (D, (H + 2 * K) * Dh)
    norms = np.sqrt((qkv[:, :H * Dh].reshape(D, H, Dh) ** 2).sum((0, 2)))
    keep = np.ones(H, bool)
    keep[np.argsort(norms)[:2]] = False
    cols = np.concatenate([np.repeat(keep, Dh), np.ones(2 * K * Dh, bool)])
    np.testing.assert_array_equal(masks[layer]["attn"]["qkv"]["kernel"],
                                  np.broadcast_to(cols, qkv.shape))
    np.testing.assert_array_equal(masks[layer]["attn"]["qkv"]["bias"], cols)
    np.testing.assert_array_equal(masks[layer]["attn"]["out"]["kernel"],
                                  np.broadcast_to(np.repeat(keep, Dh)[:, None], (H * Dh, D)))
    assert masks[layer]["attn"]["out"]["bias"].all() and masks[layer]["mlp"]["up"]["kernel"].all()
  assert masks["readout"]["kernel"].all() and masks["embed"]["embedding"].all()
  if kv_heads is None:  # a pruned head's values no longer reach the logits; a kept head's do
    pruned = pruning.apply_masks(params, masks)
    logits = np.asarray(model.apply({"params": pruned}, TOKENS))
    head_keep = np.asarray(masks["block_0"]["attn"]["out"]["kernel"][::Dh, 0])
    for h in range(H):
      v = (H + K) * Dh + h * Dh
      moved = jax.tree.map(lambda x: x, pruned)
      moved["block_0"]["attn"]["qkv"]["kernel"] = \
          moved["block_0"]["attn"]["qkv"]["kernel"].at[:, v:v + Dh].add(1.0)
      changed = np.asarray(model.apply({"params": moved}, TOKENS))
      assert np.array_equal(changed, logits) != head_keep[h], h


def test_neurons_in_transformer_only_feedforward_hidden_units():
  _, params, info = _init({"name": "transformer", "vocab_size": 16, "d_model": 8,
                           "num_layers": 1, "num_heads": 2, "use_bias": True}, TOKENS)
  masks = pruning.structured_masks(params, info, 0.25, kind="neurons")
  up = np.asarray(masks["block_0"]["mlp"]["up"]["kernel"])
  assert (~up.all(0)).sum() == 8 and (~up).sum() == 8 * 8  # 8 of 32 columns, whole columns
  for k, m in _named(masks).items():
    if "'up'" not in k:
      assert m.all(), k


def test_keep_masked_holds_pruned_weights_at_zero(mlp):
  model, params, info = mlp
  masks = pruning.magnitude_masks(params, info, 0.5)
  start = pruning.apply_masks(params, masks)

  def loss(p):
    logits = model.apply({"params": p}, IMAGES)
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

  def train(tx):
    p, state = start, tx.init(start)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(5):
      updates, state = step(p, state)
      p = optax.apply_updates(p, updates)
    return p

  adamw = lambda: optax.adamw(1e-2, weight_decay=0.1)  # noqa: E731
  kept = train(optax.chain(adamw(), pruning.keep_masked(masks)))
  assert loss(kept) < loss(start)
  trained, free = _named(kept), _named(train(adamw()))
  m, s = _named(masks), _named(start)
  for k in m:
    if k.endswith("['kernel']"):
      assert np.all(trained[k][~m[k]] == 0.0), k
      assert np.mean(trained[k][m[k]] != s[k][m[k]]) > 0.99, k
      assert np.any(free[k][~m[k]] != 0.0), k  # without keep_masked they would move


def test_sparsity_report(mlp):
  _, params, info = mlp
  masks = pruning.magnitude_masks(params, info, 0.3, scope="layerwise")
  report = json.loads(json.dumps(pruning.sparsity_report(params, masks)))
  row = report["tensors"]["dense_1/kernel"]
  assert row["shape"] == [16, 12] and row["size"] == 192
  assert row["pruned"] == row["zeros"] == round(0.3 * 192)
  assert report["tensors"]["dense_1/bias"]["sparsity"] == 1.0  # SP biases start at zero
  sizes = [x.size for x in jax.tree_util.tree_leaves(params)]
  zeros = sum(int((np.asarray(x) == 0).sum())
              for x in jax.tree_util.tree_leaves(pruning.apply_masks(params, masks)))
  assert report["global"]["size"] == sum(sizes) and report["global"]["zeros"] == zeros
  assert report["global"]["sparsity"] == pytest.approx(zeros / sum(sizes))
  plain = pruning.sparsity_report(params)
  assert "pruned" not in plain["global"] and plain["global"]["zeros"] == 12 + 16 + 10
  fig = plots.sparsity_figure(report)
  assert figure_problems(fig) == []
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  assert png_problems(buf.getvalue()) == []
