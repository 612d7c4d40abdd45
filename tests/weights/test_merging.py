"""Model merging: each method against a plain-numpy re-implementation on small random trees,
the properties the papers state, layer depths of real jaxlab models, and closed forms on a real
MLP's params."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.weights import merging

SHAPES = {"a": {"kernel": (4, 5), "bias": (5,)}, "b": {"kernel": (3, 2, 4)}}
RTOL, ATOL = 1e-5, 1e-6  # elementwise float32 arithmetic on O(1) numbers vs float64


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s)).astype(np.float32), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  chex.assert_trees_all_equal_structs(actual, expected)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol),
               actual, expected)


def _np(fn, *trees):
  """Apply a numpy function leafwise, in float64."""
  return jax.tree.map(lambda *xs: fn(*[np.asarray(x, np.float64) for x in xs]), *trees)


BASE = _tree(0)
TAUS = [_tree(1), _tree(2, scale=0.5), _tree(3, scale=2.0)]


# ------------------------------------------------------------------------- numpy references


def np_trim_leaf(x, density):
  """Zero all but the k = max(1, round(density * n)) largest |x| (numpy, via a full sort)."""
  flat = x.ravel()
  k = 0 if density == 0 else min(flat.size, max(1, int(np.floor(density * flat.size + 0.5))))
  threshold = np.sort(np.abs(flat))[::-1][k - 1] if k else np.inf
  return np.where(np.abs(x) >= threshold, x, 0.0)


def np_trim_global(tau, density):
  leaves, treedef = jax.tree.flatten(tau)
  flat = np.concatenate([np.ravel(x) for x in leaves]).astype(np.float64)
  kept = np_trim_leaf(flat, density)
  out, start = [], 0
  for x in leaves:
    out.append(kept[start:start + x.size].reshape(x.shape))
    start += x.size
  return jax.tree.unflatten(treedef, out)


def np_ties(base, taus, density, scale, scope="tensor"):
  """TIES with explicit loops over tasks per coordinate."""
  if scope == "tensor":
    trimmed = [_np(functools.partial(np_trim_leaf, density=density), t) for t in taus]
  else:
    trimmed = [np_trim_global(t, density) for t in taus]

  def merge_leaf(b, *ts):
    out = np.array(b, np.float64)
    for idx in np.ndindex(b.shape):
      values = [float(t[idx]) for t in ts]
      sign = np.sign(sum(values))
      agreeing = [v for v in values if v != 0 and np.sign(v) == sign]
      out[idx] += scale * (sum(agreeing) / len(agreeing) if agreeing else 0.0)
    return out

  return _np(merge_leaf, base, *trimmed)


def np_greedy(params_list, score):
  scores = [score(p) for p in params_list]
  order = sorted(range(len(params_list)), key=lambda i: -scores[i])
  mean = lambda idx: _np(lambda *xs: sum(xs) / len(xs), *[params_list[i] for i in idx])
  kept = [order[0]]
  for i in order[1:]:
    if score(mean(kept + [i])) >= score(mean(kept)):
      kept.append(i)
  return mean(kept), kept


def toy_score(target, params):
  """Held-out score stand-in: minus the squared distance to a target tree (float64)."""
  sq = jax.tree.map(lambda p, t: np.sum((np.asarray(p, np.float64) - t) ** 2), params, target)
  return -sum(jax.tree.leaves(sq))


# -------------------------------------------------------------------------------- soups


class SoupTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_uniform_soup_matches_numpy(self):
    models_ = [_np(lambda b, t: b + t, BASE, t) for t in TAUS]
    expected = _np(lambda *xs: np.mean(xs, axis=0), *models_)
    _close(self.variant(merging.uniform_soup)(models_), expected)


def test_soups_of_identical_models_are_that_model():
  copies = [BASE] * 4
  _close(merging.uniform_soup(copies), BASE)
  soup, kept = merging.greedy_soup(copies, functools.partial(toy_score, TAUS[0]))
  _close(soup, BASE)
  assert kept == [0, 1, 2, 3]  # equal scores: ">=" keeps every copy, in input order


def test_greedy_soup_matches_numpy_and_beats_every_ingredient():
  target = BASE
  noise = [0.5, 1.0, 0.3, 3.0, 0.8, 0.6]  # independent noise: averaging helps; 3.0 hurts
  ingredients = [_np(lambda t, n, s=s: t + s * n, target, _tree(10 + i))
                 for i, s in enumerate(noise)]
  ingredients = jax.tree.map(lambda x: x.astype(np.float32), ingredients)
  score = functools.partial(toy_score, target)
  soup, kept = merging.greedy_soup(ingredients, score)
  ref_soup, ref_kept = np_greedy(ingredients, score)
  assert 1 < len(ref_kept) < len(ingredients) and 3 not in ref_kept, ref_kept  # non-trivial
  assert kept == ref_kept
  assert kept[0] == int(np.argmin(noise))
  _close(soup, ref_soup)
  assert score(soup) >= max(score(p) for p in ingredients)


def test_greedy_soup_never_below_best_ingredient_on_random_scores():
  """Whatever the score, Alg. 1 only accepts non-decreasing soups, starting from the best."""
  ingredients = [_tree(20 + i) for i in range(4)]
  for seed in range(3):
    w = _tree(100 + seed)
    score = lambda p, w=w: float(sum(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.sum(np.tanh(np.asarray(a) * b)), p, w))))
    soup, kept = merging.greedy_soup(ingredients, score)
    assert score(soup) >= max(score(p) for p in ingredients) - 1e-5
    assert kept == np_greedy(ingredients, score)[1]


# ---------------------------------------------------------------------------- task vectors


class TaskArithmeticTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_task_vectors_and_arithmetic_match_numpy(self):
    finetuned = [_np(lambda b, t: b + t, BASE, t) for t in TAUS]
    taus = self.variant(merging.task_vectors)(BASE, finetuned)
    for tau, expected in zip(taus, TAUS):
      _close(tau, expected)
    for scale in (0.3, 1.0):
      expected = _np(lambda b, *ts, s=scale: b + s * sum(ts), BASE, *TAUS)
      _close(self.variant(merging.task_arithmetic)(BASE, TAUS, scale), expected)


# ------------------------------------------------------------------------------------ TIES


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 1.0])
def test_magnitude_trim_matches_numpy(scope, density):
  trimmed = merging.magnitude_trim(TAUS[0], density, scope=scope)
  if scope == "tensor":
    expected = _np(functools.partial(np_trim_leaf, density=density), TAUS[0])
  else:
    expected = np_trim_global(TAUS[0], density)
  _close(trimmed, expected, rtol=0, atol=0)
  kept = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(trimmed))
  if scope == "global":
    assert kept == int(np.floor(density * 49 + 0.5)), kept  # 49 entries in SHAPES


@pytest.mark.parametrize("scope,density,scale", [("tensor", 0.2, 1.0), ("global", 0.5, 0.7),
                                                  ("tensor", 1.0, 0.4)])
def test_ties_matches_numpy(scope, density, scale):
  _close(merging.ties_merge(BASE, TAUS, density, scale, scope=scope),
         np_ties(BASE, TAUS, density, scale, scope))


def test_ties_hand_example():
  """Density 1: sums 1.5, -1.75, -1, 0 elect +, -, -, 0; disjoint means 1.5, -1.5, -4, 0."""
  taus = [{"w": np.array([1., -2., 3., .5])}, {"w": np.array([-1.5, -1., 0., -2.])},
          {"w": np.array([2., 1.25, -4., 1.5])}]
  merged = merging.ties_merge({"w": np.zeros(4)}, taus, density=1.0)
  np.testing.assert_allclose(merged["w"], [1.5, -1.5, -4., 0.])
  # Density 0.5 keeps the two largest of each: [0, -2, 3, 0], [-1.5, 0, 0, -2], [2, 0, -4, 0];
  # sums 0.5, -2, -1, -2 elect +, -, -, -.
  half = merging.ties_merge({"w": np.zeros(4)}, taus, density=0.5, scale=0.5)
  np.testing.assert_allclose(half["w"], [1., -1., -2., -1.])


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_ties_density_one_single_task_is_task_arithmetic(scale):
  _close(merging.ties_merge(BASE, TAUS[:1], density=1.0, scale=scale),
         merging.task_arithmetic(BASE, TAUS[:1], scale))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="density"):
    merging.ties_merge(BASE, TAUS, density=1.5)
  with pytest.raises(ValueError, match="scope"):
    merging.magnitude_trim(TAUS[0], 0.5, scope="layer")
  with pytest.raises(ValueError, match="drop_rate"):
    merging.dare(TAUS[0], -0.1, jax.random.key(0))
  with pytest.raises(ValueError, match="method"):
    merging.dare_merge(BASE, TAUS, 0.5, jax.random.key(0), method="mean")
  with pytest.raises(ValueError, match="empty"):
    merging.uniform_soup([])


# ------------------------------------------------------------------------------------ DARE


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_dare_drops_p_and_rescales_the_rest(p):
  draws = 1000
  out = jax.jit(jax.vmap(lambda k: merging.dare(TAUS[0], p, k)))(
      jax.random.split(jax.random.key(0), draws))
  n = draws * 49
  dropped = sum(int(np.sum(np.asarray(x) == 0)) for x in jax.tree.leaves(out))
  # Binomial(n, p): 5 standard deviations.
  assert abs(dropped / n - p) < 5 * np.sqrt(p * (1 - p) / n), dropped / n
  for x, tau in zip(jax.tree.leaves(out), jax.tree.leaves(TAUS[0])):
    x = np.asarray(x)
    kept = x != 0
    np.testing.assert_allclose(x, np.where(kept, tau / (1 - p), 0), rtol=1e-6)
    assert 0 < kept.mean(axis=0).min() and kept.mean(axis=0).max() < 1  # not one shared mask


def test_dare_is_unbiased():
  """E[dare(tau)] = tau: mean of `draws` draws, each entry within 5 standard errors
  |tau| sqrt(p / (1 - p) / draws)."""
  p, draws = 0.5, 4000
  out = jax.jit(jax.vmap(lambda k: merging.dare(TAUS[1], p, k)))(
      jax.random.split(jax.random.key(1), draws))
  for x, tau in zip(jax.tree.leaves(out), jax.tree.leaves(TAUS[1])):
    se = np.abs(tau) * np.sqrt(p / (1 - p) / draws)
    err = np.abs(np.asarray(x, np.float64).mean(axis=0) - tau)
    assert np.all(err <= 5 * se + 1e-6), (err / se).max()


def test_dare_edges():
  _close(merging.dare(TAUS[0], 0.0, jax.random.key(0)), TAUS[0], rtol=0, atol=0)
  zeros = merging.dare(TAUS[0], 1.0, jax.random.key(0))
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(zeros))


def test_dare_merge_matches_numpy_on_the_dropped_vectors():
  """Task i is dropped with key i of jax.random.split(rng, num_tasks), then merged."""
  p, rng = 0.4, jax.random.key(7)
  keys = jax.random.split(rng, len(TAUS))
  dropped = [jax.tree.map(np.asarray, merging.dare(t, p, k)) for t, k in zip(TAUS, keys)]
  masks = [np.asarray(d["b"]["kernel"]) == 0 for d in dropped]
  assert not np.array_equal(masks[0], masks[1])  # each task draws its own mask
  _close(merging.dare_merge(BASE, TAUS, p, rng, scale=0.6),
         _np(lambda b, *ts: b + 0.6 * sum(ts), BASE, *dropped))
  _close(merging.dare_merge(BASE, TAUS, p, rng, method="ties", scale=0.8, density=0.5),
         np_ties(BASE, dropped, 0.5, 0.8))


# ----------------------------------------------------------------------------------- LiNeS


def _boxed_shapes(cfg, x):
  model = models.build(cfg, parametrization=param.get("sp"))
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


MLP_CFG = {"name": "mlp", "hidden_widths": (8, 8, 8), "num_classes": 3}
MLP_X = np.zeros((1, 4, 4, 1), np.float32)


def test_layer_depths_of_a_real_mlp():
  depths = merging.layer_depths(_boxed_shapes(MLP_CFG, MLP_X))
  indices, num_layers = merging.layer_indices(_boxed_shapes(MLP_CFG, MLP_X))
  assert num_layers == 4
  order = ["dense_0", "dense_1", "dense_2", "readout"]
  assert [indices[m]["kernel"] for m in order] == [1, 2, 3, 4]
  assert [depths[m]["kernel"] for m in order] == [0, 1 / 3, 2 / 3, 1]
  assert all(depths[m]["bias"] == depths[m]["kernel"] for m in order)


def test_layer_depths_of_a_real_transformer():
  """11 blocks: block_10 comes after block_9 (numeric, not alphabetical order)."""
  cfg = {"name": "transformer", "vocab_size": 16, "d_model": 8, "num_layers": 11,
         "num_heads": 2, "max_len": 8, "positional": "learned"}
  depths = merging.layer_depths(_boxed_shapes(cfg, np.zeros((1, 8), np.int32)))
  per_block = [set(jax.tree.leaves(depths[f"block_{i}"])) for i in range(11)]
  assert all(len(s) == 1 for s in per_block)  # one depth per block
  forward = ([depths["embed"]["embedding"], depths["pos_embed"]["embedding"]]
             + [s.pop() for s in per_block] + [depths["final_norm"]["scale"],
                                               depths["readout"]["kernel"]])
  assert forward[0] == forward[1] == 0 and forward[-2] == forward[-1] == 1
  np.testing.assert_allclose(forward[1:-1], np.arange(13) / 12)


def test_layer_depths_of_a_real_convnext():
  """stage_<s>_block_<b> in (s, b) order; downsample_<s> joins the block it feeds."""
  cfg = {"name": "convnext", "widths": (8, 16), "depths": (1, 2), "num_classes": 3,
         "patch_size": 2}
  indices, num_layers = merging.layer_indices(
      _boxed_shapes(cfg, np.zeros((1, 8, 8, 1), np.float32)))
  assert num_layers == 5
  assert indices["stem"]["kernel"] == indices["stem_norm"]["scale"] == 1
  assert set(jax.tree.leaves(indices["stage_0_block_0"])) == {2}
  assert indices["downsample_1"]["kernel"] == indices["downsample_1_norm"]["scale"] == 3
  assert set(jax.tree.leaves(indices["stage_1_block_0"])) == {3}
  assert set(jax.tree.leaves(indices["stage_1_block_1"])) == {4}
  assert indices["readout"]["kernel"] == indices["final_norm"]["scale"] == 5


def test_lines_scale_matches_numpy():
  depth_of = {"a": {"kernel": 0.0, "bias": 0.25}, "b": {"kernel": 1.0}}  # a caller's own depths
  alpha, beta = 0.3, 0.6
  _close(merging.lines_scale(TAUS[2], depth_of, alpha, beta),
         _np(lambda t, d: t * (alpha + beta * d), TAUS[2], depth_of))


@pytest.fixture(scope="module")
def mlp_pair():
  """A real MLP and two of its param trees A, B: two inits (one compiled call), with random
  biases (the init's are zero) so that every leaf of B - A is nonzero."""
  model = models.build(MLP_CFG, parametrization=param.get("sp"))
  keys = jax.random.split(jax.random.key(0), 2)
  stacked = param.unbox(jax.jit(jax.vmap(model.init, (0, None)))(keys, MLP_X)["params"])
  rng = np.random.default_rng(0)
  pair = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked) for i in range(2)]
  for p in pair:
    for module in p.values():
      module["bias"] = rng.standard_normal(module["bias"].shape).astype(np.float32)
  return model, pair[0], pair[1]


def test_lines_first_layer_alpha_last_layer_alpha_plus_beta(mlp_pair):
  _, _, tau = mlp_pair
  alpha, beta = 0.2, 0.5
  scaled = merging.lines_scale(tau, None, alpha, beta)
  for module, factor in (("dense_0", alpha), ("dense_1", alpha + beta / 3),
                         ("dense_2", alpha + 2 * beta / 3), ("readout", alpha + beta)):
    for name in ("kernel", "bias"):
      np.testing.assert_allclose(scaled[module][name], factor * tau[module][name], rtol=1e-6,
                                 atol=1e-7)


# ---------------------------------------------------------------- real-model closed forms


def test_real_mlp_merges_reach_closed_forms(mlp_pair):
  """Two param trees A, B of a real MLP; tau = B - A. Each method, with scale / density chosen
  so the answer is known: 0.5 of tau over A is the soup of A and B, tau over A is B, opposing
  task vectors cancel in TIES, DARE at p = 0 is the identity, LiNeS with beta = 0 is task
  arithmetic with scale alpha."""
  model, a, b = mlp_pair
  magnitude = max(float(np.max(np.abs(x))) for x in jax.tree.leaves((a, b)))
  close = functools.partial(_close, rtol=1e-6, atol=1e-6 * magnitude)
  rng = jax.random.key(5)

  @jax.jit  # every merge composes under one outer jit (and compiles once here)
  def merges(a, b):
    (tau,) = merging.task_vectors(a, [b])
    neg = jax.tree.map(jnp.negative, tau)
    return tau, dict(
        soup=merging.uniform_soup([a, b]),
        ta_half=merging.task_arithmetic(a, [tau], 0.5),
        ta_one=merging.task_arithmetic(a, [tau], 1.0),
        ta_cancel=merging.task_arithmetic(a, [tau, neg], 1.0),
        ties_twice=merging.ties_merge(a, [tau, tau], density=1.0),  # mean of equal entries
        ties_twice_half=merging.ties_merge(a, [tau, tau], density=1.0, scale=0.5),
        ties_cancel=merging.ties_merge(a, [tau, neg], density=1.0),  # elected sign 0
        ties_trim=merging.ties_merge(a, [tau], density=0.5),
        dare_ta=merging.dare_merge(a, [tau], 0.0, rng, scale=0.5),
        dare_ties=merging.dare_merge(a, [tau, tau], 0.0, rng, method="ties"),
        lines_flat=merging.task_arithmetic(a, [merging.lines_scale(tau, None, 0.5, 0.0)]),
        lines_ramp=merging.task_arithmetic(a, [merging.lines_scale(tau, None, 0.0, 1.0)]))

  tau, m = merges(a, b)
  soup = m["soup"]
  close(soup, _np(lambda x, y: (x + y) / 2, a, b))
  assert all(np.all(np.asarray(t) != 0) for t in jax.tree.leaves(tau))
  for name in ("ta_half", "ties_twice_half", "dare_ta", "lines_flat"):
    close(m[name], soup)
  for name in ("ta_one", "ties_twice", "dare_ties"):
    close(m[name], b)
  for name in ("ta_cancel", "ties_cancel"):
    close(m[name], a)
  close(m["lines_ramp"]["dense_0"], a["dense_0"])  # the first layer keeps the base weights
  close(m["lines_ramp"]["readout"], b["readout"])  # the last takes the whole task vector
  # Half-density TIES of one task: the larger-|tau| half of each tensor moves to B, the rest
  # stays at A.
  for h, x, y, t in zip(*map(jax.tree.leaves, (m["ties_trim"], a, b, tau))):
    h, x, y, t = map(np.asarray, (h, x, y, t))
    k = int(np.floor(0.5 * x.size + 0.5))
    moved = np.abs(t) >= np.sort(np.abs(t).ravel())[-k]
    assert moved.sum() == k
    np.testing.assert_allclose(h[moved], y[moved], rtol=1e-6, atol=1e-6 * magnitude)
    np.testing.assert_array_equal(h[~moved], x[~moved])
  # A greedy soup whose score peaks at the midpoint keeps both ingredients.
  score = lambda p: toy_score(soup, p)
  greedy, kept = merging.greedy_soup([a, b], score)
  assert sorted(kept) == [0, 1]
  close(greedy, soup)
  # The merged tree is a valid param tree of the model: tau over A gives B's logits.
  x = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype(np.float32)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply({"params": m["ta_one"]}, x),
                             apply({"params": b}, x), rtol=1e-5, atol=1e-5 * magnitude)
