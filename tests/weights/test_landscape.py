"""Loss-landscape slices: filter-normalised directions have the params' filter norms, slices
match direct evaluation and the closed form of a quadratic loss, interpolation hits its ends."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, param
from jaxlab.analysis import plots
from jaxlab.param import ParamInfo, roles
from jaxlab.weights import landscape
from tests.plot_checks import figure_problems, png_problems

IMAGES = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(1).integers(0, 10, 16)


def _init(cfg, seed=0):
  model = models.build(cfg, parametrization=param.get("sp"))
  boxed = jax.jit(model.init)(jax.random.PRNGKey(seed), IMAGES[:2])["params"]
  return model, param.unbox(boxed), param.param_info(boxed)


@pytest.fixture(scope="module")
def mlp():
  model, params, info = _init({"name": "mlp", "hidden_widths": (16, 12), "num_classes": 10})

  def loss(p):
    logits = model.apply({"params": p}, IMAGES)
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

  return model, params, info, loss


def _filters(x):
  x = np.asarray(x, np.float64)
  return np.sqrt((x ** 2).reshape(-1, x.shape[-1]).sum(0))


@pytest.mark.parametrize("cfg", [
    {"name": "mlp", "hidden_widths": (16, 12), "num_classes": 10},
    {"name": "resnet", "width": 4, "blocks_per_stage": 1, "num_classes": 3}])
def test_filter_norms_match_params(cfg):
  _, params, info = _init(cfg)
  d = landscape.filter_normalized_direction(jax.random.PRNGKey(1), params, info)
  infos = jax.tree_util.tree_leaves(info, is_leaf=lambda x: isinstance(x, ParamInfo))
  pairs = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(d), infos)
  weights = 0
  for p, x, inf in pairs:
    assert x.shape == p.shape and x.dtype == p.dtype
    if inf.role in (roles.BIAS, roles.NORM):
      assert np.all(np.asarray(x) == 0.0)
    else:
      weights += 1
      np.testing.assert_allclose(_filters(x), _filters(p), rtol=1e-5)
      assert not np.allclose(np.asarray(x), np.asarray(p))  # random, not a copy of p
  assert weights >= 3
  again = landscape.filter_normalized_direction(jax.random.PRNGKey(1), params, info)
  other = landscape.filter_normalized_direction(jax.random.PRNGKey(2), params, info)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(d),
                                                  jax.tree_util.tree_leaves(again)))
  assert not np.allclose(d["readout"]["kernel"], other["readout"]["kernel"])


def test_bias_and_norm_normalised_when_not_ignored():
  _, params, info = _init({"name": "resnet", "width": 4, "blocks_per_stage": 1,
                           "num_classes": 3})
  params = jax.tree.map(lambda x: x + 0.5 if x.ndim == 1 else x, params)
  d = landscape.filter_normalized_direction(jax.random.PRNGKey(1), params, info,
                                            ignore_bias_and_norm=False)
  for name in ("scale", "bias"):
    p, x = np.asarray(params["stem_norm"][name]), np.asarray(d["stem_norm"][name])
    np.testing.assert_allclose(np.linalg.norm(x), np.linalg.norm(p), rtol=1e-5)
    assert not np.allclose(x, p)


def test_slice_1d_matches_direct_evaluation(mlp):
  _, params, info, loss = mlp
  d = landscape.filter_normalized_direction(jax.random.PRNGKey(3), params, info)
  alphas = np.array([0.0, -1.0, -0.5, 0.25, 0.5, 1.0, 2.0])
  got = np.asarray(landscape.slice_1d(loss, params, d, alphas, chunk_size=3))
  direct = [float(loss(jax.tree.map(lambda p, x: p + a * x, params, d))) for a in alphas]
  np.testing.assert_allclose(got, direct, rtol=1e-5)
  np.testing.assert_allclose(got[0], float(loss(params)), rtol=1e-6)
  assert got[-1] > got[0]  # two filter-norms away the loss has risen


def _quadratic(c):
  """L(theta) = 1/2 sum c theta^2 over the leaves."""
  return lambda p: 0.5 * sum(jnp.sum(ci * x * x) for ci, x in zip(c, jax.tree_util.tree_leaves(p)))


def test_slice_2d_quadratic_closed_form(mlp):
  _, params, info, _ = mlp
  leaves = jax.tree_util.tree_leaves(params)
  rng = np.random.default_rng(4)
  c = [jnp.asarray(rng.uniform(0.5, 2.0, x.shape), jnp.float32) for x in leaves]
  d1 = landscape.filter_normalized_direction(jax.random.PRNGKey(5), params, info)
  d2 = landscape.filter_normalized_direction(jax.random.PRNGKey(6), params, info)
  alphas, betas = np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 4)
  got = np.asarray(landscape.slice_2d(_quadratic(c), params, d1, d2, alphas, betas,
                                      chunk_size=6))
  assert got.shape == (5, 4)
  t, u, v = ([np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
             for tree in (params, d1, d2))
  cc = [np.asarray(x, np.float64) for x in c]
  dot = lambda x, y: sum(np.sum(ci * a * b) for ci, a, b in zip(cc, x, y))  # noqa: E731
  L0, g1, g2 = 0.5 * dot(t, t), dot(t, u), dot(t, v)
  h11, h12, h22 = dot(u, u), dot(u, v), dot(v, v)
  a, b = np.meshgrid(alphas, betas, indexing="ij")
  closed = L0 + a * g1 + b * g2 + 0.5 * (a * a * h11 + 2 * a * b * h12 + b * b * h22)
  np.testing.assert_allclose(got, closed, rtol=2e-5)


def test_interpolation_endpoints_and_extrapolation(mlp):
  _, params_a, _, loss = mlp
  _, params_b, _ = _init({"name": "mlp", "hidden_widths": (16, 12), "num_classes": 10}, seed=7)
  lambdas = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
  got = np.asarray(landscape.interpolation_slice(loss, params_a, params_b, lambdas,
                                                 chunk_size=2))
  np.testing.assert_allclose(got[1], float(loss(params_a)), rtol=1e-6)
  np.testing.assert_allclose(got[3], float(loss(params_b)), rtol=1e-6)
  mid = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, params_a, params_b)
  np.testing.assert_allclose(got[2], float(loss(mid)), rtol=1e-5)
  c = [jnp.ones(x.shape) for x in jax.tree_util.tree_leaves(params_a)]
  quad = np.asarray(landscape.interpolation_slice(_quadratic(c), params_a, params_b, lambdas))
  la, lb = ([np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(p)]
            for p in (params_a, params_b))
  na, nb, ab = (sum(float(np.sum(x * y)) for x, y in zip(u, v))
                for u, v in ((la, la), (lb, lb), (la, lb)))
  closed = 0.5 * ((1 - lambdas) ** 2 * na + 2 * (1 - lambdas) * lambdas * ab + lambdas ** 2 * nb)
  np.testing.assert_allclose(quad, closed, rtol=2e-5)


def test_landscape_figures(mlp):
  _, params, info, loss = mlp
  d1 = landscape.filter_normalized_direction(jax.random.PRNGKey(1), params, info)
  d2 = landscape.filter_normalized_direction(jax.random.PRNGKey(2), params, info)
  alphas = np.linspace(-1, 1, 7)
  curves = {"direction 1": (alphas, landscape.slice_1d(loss, params, d1, alphas)),
            "direction 2": (alphas, landscape.slice_1d(loss, params, d2, alphas))}
  grid = landscape.slice_2d(loss, params, d1, d2, alphas, alphas, chunk_size=16)
  for fig in (plots.landscape_1d_figure(curves),
              plots.landscape_contour_figure(alphas, alphas, grid)):
    assert figure_problems(fig) == []
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert png_problems(buf.getvalue()) == []
