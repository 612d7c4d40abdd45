"""Permutation groups derived from the traced model: the permuted network computes the same
function, the groups are the ones the architectures have, and a broken permutation is caught."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.param.meta import unbox
from jaxlab.weights import permutation as P

FAMILIES = {
    "mlp": ({"name": "mlp", "hidden_widths": (16, 24), "num_classes": 10}, (4, 28, 28, 1)),
    "resnet": ({"name": "resnet", "num_classes": 10}, (2, 28, 28, 1)),
    "vit": ({"name": "vit", "num_classes": 10, "patch_size": 7, "dim": 32, "depth": 2,
             "num_heads": 4}, (2, 28, 28, 1)),
    "lm": ({"name": "transformer", "vocab_size": 64, "d_model": 32, "num_layers": 2,
            "num_heads": 4, "positional": "rope"}, (2, 12)),
}


def build(family, seed=0):
  cfg, shape = FAMILIES[family]
  model = models.build(cfg, parametrization=param.get("sp"))
  if family == "lm":
    x = jax.random.randint(jax.random.PRNGKey(1), shape, 0, cfg["vocab_size"])
  else:
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
  variables = unbox(model.init(jax.random.PRNGKey(seed), x))
  # zero biases and unit gains hide a wrong permutation: make every entry distinct
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
  leaves = [w + 0.1 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(tree, leaves), x


def _max_rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_permutation_keeps_the_function(family):
  model, v, x = build(family)
  spec = P.permutation_spec(model.apply, v, x)
  assert spec.groups
  perms = P.random_permutation(spec, jax.random.PRNGKey(7))
  permuted = P.apply_permutation(spec, perms, v)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v),
                                                      jax.tree.leaves(permuted)))
  assert _max_rel(model.apply(v, x), model.apply(permuted, x)) < 1e-5
  back = P.apply_permutation(spec, P.inverse(perms), permuted)
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_permuting_one_member_alone_changes_the_function(family):
  """The check above has teeth: moving the units of only one parameter of a group breaks it."""
  model, v, x = build(family)
  spec = P.permutation_spec(model.apply, v, x)
  g = max(spec.groups, key=lambda name: len(spec.members(name)))
  path, axis = max(((p, a) for p, a in spec.members(g) if spec.axes[p][a] == ("perm", g)),
                   key=lambda pa: np.size(_leaf(v, pa[0])))
  perm = jax.random.permutation(jax.random.PRNGKey(3), spec.groups[g])
  lone = P.PermutationSpec(spec.groups, {path: tuple(
      ("perm", g) if k == axis else None for k in range(len(spec.axes[path])))})
  broken = P.apply_permutation(lone, {g: perm}, v)
  assert _max_rel(model.apply(v, x), model.apply(broken, x)) > 1e-3


def _leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def test_mlp_groups():
  model, v, x = build("mlp")
  spec = P.permutation_spec(model.apply, v, x)
  assert dict(spec.groups) == {"dense_0": 16, "dense_1": 24}
  assert spec.axes["params/dense_0/kernel"] == (None, ("perm", "dense_0"))
  assert spec.axes["params/dense_1/kernel"] == (("perm", "dense_0"), ("perm", "dense_1"))
  assert spec.axes["params/readout/kernel"] == (("perm", "dense_1"), None)
  assert spec.axes["params/readout/bias"] == (None,)


def test_resnet_groups():
  """One permutation per stage's residual stream (the stem and every block's second conv write
  it) and one per block's inner channels."""
  model, v, x = build("resnet")
  spec = P.permutation_spec(model.apply, v, x)
  streams = sorted(g for g in spec.groups if g.startswith("residual"))
  assert len(streams) == 3
  inner = sorted(g for g in spec.groups if g.endswith("conv_0"))
  assert len(inner) == len(spec.groups) - 3 == 6
  stem = spec.axes["params/stem/kernel"][-1]
  assert spec.axes["params/stage_0_block_1/conv_1/kernel"][-1] == stem
  assert spec.axes["params/stage_0_block_1/conv_0/kernel"][2] == stem
  assert spec.axes["params/stage_0_block_0/norm_0/scale"] == (
      spec.axes["params/stage_0_block_0/conv_0/kernel"][-1],)


@pytest.mark.parametrize("family", ["vit", "lm"])
def test_transformer_groups(family):
  """The residual stream is one permutation over every embed axis; heads move as blocks of
  head_dim inside the fused [q | k | v] axis; each block's MLP hidden units are a group."""
  model, v, x = build(family)
  spec = P.permutation_spec(model.apply, v, x)
  stream = ("perm", "residual")
  embed = "embed/embedding" if family == "lm" else "pos_embed/embedding"
  assert spec.axes[f"params/{embed}"][-1] == stream
  for b in range(2):
    for path in (f"block_{b}/attn/qkv/kernel", f"block_{b}/mlp/up/kernel"):
      assert spec.axes[f"params/{path}"][0] == stream
    assert spec.axes[f"params/block_{b}/attn/out/kernel"][1] == stream
    assert spec.axes[f"params/block_{b}/mlp/down/kernel"][1] == stream
    assert spec.axes[f"params/block_{b}/mlp/up/kernel"][1] == ("perm", f"block_{b}/mlp/up")
    kind, parts = spec.axes[f"params/block_{b}/attn/qkv/kernel"][1]
    assert kind == "concat" and len(parts) == 3
    heads = {part[1][0] for part in parts}
    assert len(heads) == 1 and spec.groups[next(iter(heads))[1]] == 4  # one head group, 4 heads
  assert spec.axes["params/readout/kernel"][0] == stream
  if family == "lm":  # RoPE rotates pairs of q/k dims: their order is fixed; v's is free
    parts = spec.axes["params/block_0/attn/qkv/kernel"][1][1]
    assert parts[0][1][1] == ("fixed", 8) and parts[2][1][1][0] == "perm"


def test_unit_rows_of_fused_qkv_match_a_manual_slice():
  from jaxlab.weights.matching import unit_rows  # pylint: disable=g-import-not-at-top
  model, v, x = build("lm")
  spec = P.permutation_spec(model.apply, v, x)
  kernel = v["params"]["block_0"]["attn"]["qkv"]["kernel"]  # [32, 3 * 4 * 8]
  ex = spec.axes["params/block_0/attn/qkv/kernel"][1]
  heads = ex[1][0][1][0][1]
  rows = unit_rows(kernel, 1, ex, heads, spec.groups)
  k = np.asarray(kernel)
  for h in range(4):
    want = np.concatenate([k[:, part * 32 + h * 8: part * 32 + (h + 1) * 8].reshape(-1)
                           for part in range(3)])
    got = np.asarray(rows[h])
    assert sorted(got.tolist()) == sorted(want.tolist())
    assert got.shape == want.shape
