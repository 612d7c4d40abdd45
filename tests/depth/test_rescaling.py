"""LIR and TVR (Owen et al. 2025): target stds, exact re-standardisation, step schedule,
composition after AdamW with an untouched optimizer state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, param
from jaxlab.depth import rescaling
from jaxlab.param import roles

V, D, LAYERS, HEADS = 32, 64, 3, 4
TOKENS = np.zeros((1, 4), np.int32)
SIGMA = 0.02


def _lm():
  return models.TransformerLM(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS,
                              max_len=16)


@functools.lru_cache(maxsize=None)
def _lm_info():
  """param_info from shapes only (nothing compiled)."""
  return param.param_info(jax.eval_shape(_lm().init, jax.random.PRNGKey(0), TOKENS)["params"])


@functools.lru_cache(maxsize=None)
def _lm_info_and_params():
  boxed = jax.jit(_lm().init)(jax.random.PRNGKey(0), TOKENS)["params"]
  return param.param_info(boxed), param.unbox(boxed)


def _leaves_with_path(tree):
  return {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: x is None)}


def test_layer_index_stds_are_sigma_over_sqrt_l():
  info = _lm_info()
  stds = rescaling.layer_index_stds(info, SIGMA)
  for i in range(LAYERS):
    for name in (("attn", "qkv"), ("attn", "out"), ("mlp", "up"), ("mlp", "down")):
      sub = stds[f"block_{i}"]
      for n in name:
        sub = sub[n]
      assert sub["kernel"] == pytest.approx(SIGMA / np.sqrt(i + 1))
    assert stds[f"block_{i}"]["attn_norm"]["scale"] is None
  assert stds["embed"]["embedding"] is None and stds["readout"]["kernel"] is None
  with pytest.raises(ValueError, match="sigma"):
    rescaling.layer_index_stds(info, 0.0)
  with pytest.raises(ValueError, match="block_0"):
    rescaling.layer_index_stds(info, SIGMA, pattern=r"layer_(\d+)")


def test_lir_rescale_gives_target_std_per_block_and_keeps_the_rest():
  info, params = _lm_info_and_params()
  out = rescaling.lir_rescale(params, info, SIGMA)
  assert rescaling.block_index(("block_2", "attn")) == 2
  for path, w in jax.tree_util.tree_leaves_with_path(out):
    keys = [k.key for k in path]
    before = _leaves_with_path(params)[jax.tree_util.keystr(path)]
    if keys[0].startswith("block_") and keys[-1] == "kernel":
      l = int(keys[0].split("_")[1]) + 1
      assert float(jnp.std(w)) == pytest.approx(SIGMA / np.sqrt(l), rel=0.02)
      np.testing.assert_allclose(w / before, np.full(w.shape, w[0, 0] / before[0, 0]),
                                 rtol=1e-4)  # a pure rescale
    else:
      np.testing.assert_array_equal(w, before)


def test_tvr_targets_init_std_and_depth_scaled():
  info = _lm_info()
  targets = rescaling.tvr_targets(info)
  assert targets["block_1"]["mlp"]["down"]["kernel"] == pytest.approx(1 / np.sqrt(4 * D))
  assert targets["block_1"]["attn"]["qkv"]["kernel"] == pytest.approx(1 / np.sqrt(D))
  assert targets["embed"]["embedding"] is None and targets["final_norm"]["scale"] is None
  depth = rescaling.tvr_targets(info, depth_sigma=SIGMA)
  assert depth == rescaling.layer_index_stds(info, SIGMA)
  with pytest.raises(ValueError, match="unknown parameter role"):
    rescaling.tvr_targets(info, roles=("kernel",))


# --- TVR transform on a hand-made tree ------------------------------------------------------

TARGET = 0.1


def _tree(big=3.0, small=1.1, seed=0):
  """Two watched weights (std big x and small x target) and one unwatched."""
  r = np.random.default_rng(seed)
  norm = lambda s, shape: jnp.asarray(r.standard_normal(shape) * s, jnp.float32)  # noqa: E731
  params = {"block_0": {"grown": norm(big * TARGET, (64, 48)), "calm": norm(small * TARGET,
                                                                              (64, 48))},
            "embed": norm(1.0, (8, 4))}
  targets = {"block_0": {"grown": TARGET, "calm": TARGET}, "embed": None}
  return params, targets


def _std(x):
  return float(jnp.std(x))


def test_tvr_rescales_on_multiples_of_k_only():
  params, targets = _tree()
  k = 3
  tx = rescaling.target_variance_rescaling(targets, every_k=k, ratio_threshold=1.2)
  update = jax.jit(tx.update)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  for step in range(1, 2 * k + 1):
    u, state = update(grads, state, params)
    assert int(state.count) == step
    if step % k:
      jax.tree.map(np.testing.assert_array_equal, u, grads)  # nothing on other steps
      assert int(state.rescaled) == 0
      continue
    new = optax.apply_updates(params, u)
    assert _std(new["block_0"]["grown"]) == pytest.approx(TARGET, rel=1e-5)
    # under the threshold (1.1 x target): plain update; unwatched: plain update
    np.testing.assert_array_equal(u["block_0"]["calm"], grads["block_0"]["calm"])
    np.testing.assert_array_equal(u["embed"], grads["embed"])
    if step > k:  # 'grown' is back at its target (a constant shift keeps its std): untouched
      np.testing.assert_array_equal(u["block_0"]["grown"], grads["block_0"]["grown"])
      assert int(state.rescaled) == 0
      continue
    assert int(state.rescaled) == 1
    # the rescale acts on the post-update weights: W_out = (W + u) * target / std(W + u)
    w = params["block_0"]["grown"] + grads["block_0"]["grown"]
    np.testing.assert_allclose(new["block_0"]["grown"], w * TARGET / jnp.std(w), rtol=1e-5,
                               atol=1e-7)
    params = new


def test_tvr_threshold_decides_which_weights_are_rescaled():
  params, targets = _tree(big=1.5, small=1.1)
  zero = jax.tree.map(jnp.zeros_like, params)
  for thr, fired in ((1.2, {"grown"}), (1.05, {"grown", "calm"}), (2.0, set())):
    tx = rescaling.target_variance_rescaling(targets, every_k=1, ratio_threshold=thr)
    u, state = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, u)
    for name in ("grown", "calm"):
      if name in fired:
        assert _std(new["block_0"][name]) == pytest.approx(TARGET, rel=1e-5)
      else:
        np.testing.assert_array_equal(new["block_0"][name], params["block_0"][name])
    assert int(state.rescaled) == len(fired)


def test_tvr_after_adamw_keeps_adam_state_consistent():
  params, targets = _tree(big=1.0, small=1.0)
  k, lr = 4, 0.05  # a big LR grows the weights past 1.2 x target between rescales
  chain = optax.chain(optax.adamw(lr, weight_decay=0.01),
                      rescaling.target_variance_rescaling(targets, every_k=k))
  plain = optax.adamw(lr, weight_decay=0.01)
  c_state, p_state = chain.init(params), plain.init(params)
  step = jax.jit(chain.update)
  rng = np.random.default_rng(1)
  fired = 0
  for t in range(1, 3 * k + 1):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    u, c_state = step(grads, c_state, params)
    _, p_state = jax.jit(plain.update)(grads, p_state, params)
    params = optax.apply_updates(params, u)
    fired += int(c_state[1].rescaled)
    if t % k == 0:
      assert _std(params["block_0"]["grown"]) == pytest.approx(TARGET, rel=1e-5)
    adam_c, adam_p = c_state[0][0], p_state[0]
    assert jax.tree.structure(c_state[0]) == jax.tree.structure(p_state)
    assert int(adam_c.count) == int(adam_p.count) == t
    for a, b in ((adam_c.mu, adam_p.mu), (adam_c.nu, adam_p.nu)):
      jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(a))
  assert fired >= 3  # the rescale really happened


def test_tvr_errors():
  params, targets = _tree()
  with pytest.raises(ValueError, match="every_k"):
    rescaling.target_variance_rescaling(targets, every_k=0)
  with pytest.raises(ValueError, match="ratio_threshold"):
    rescaling.target_variance_rescaling(targets, every_k=1, ratio_threshold=0.0)
  with pytest.raises(ValueError, match="grown"):
    rescaling.target_variance_rescaling({"block_0": {"grown": -1.0}}, every_k=1)
  tx = rescaling.target_variance_rescaling(targets, every_k=1)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="structure"):
    tx.init({"block_0": params["block_0"]})


def test_tvr_roles_of_lm_are_hidden_only():
  info, params = _lm_info_and_params()
  targets = rescaling.tvr_targets(info)
  watched = {k for k, v in _leaves_with_path(targets).items() if v is not None}
  hidden = {jax.tree_util.keystr(p) for p, i in jax.tree_util.tree_leaves_with_path(
      info, is_leaf=lambda x: isinstance(x, param.ParamInfo)) if i.role == roles.HIDDEN}
  assert watched == hidden and len(watched) == 4 * LAYERS
  tx = rescaling.target_variance_rescaling(targets, every_k=1)
  zero = jax.tree.map(jnp.zeros_like, params)
  u, state = jax.jit(tx.update)(zero, tx.init(params), params)
  assert int(state.rescaled) == 0  # at init every std is ~ its target
