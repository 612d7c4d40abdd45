"""Linear interpolation, loss barriers and REPAIR / RESCALE on real models."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.weights import interpolation as I
from tests.weights.test_permutation import build


def test_barrier_closed_forms():
  lams = np.linspace(0, 1, 25)
  assert abs(I.barrier(2 + 3 * lams, lams)) < 1e-12  # linear: no barrier
  bump = 1 - lams + 0.7 * np.sin(np.pi * lams)  # the chord is 1 - lam
  assert abs(I.barrier(bump, lams) - 0.7) < 1e-12


def test_path_curve_endpoints_and_midpoint():
  model, a, x = build("mlp", seed=0)
  _, b, _ = build("mlp", seed=1)

  def eval_fn(v):
    return {"loss": jnp.mean(model.apply(v, x) ** 2)}

  curve = I.path_curve(eval_fn, a, b, num=5)
  np.testing.assert_allclose(curve["lam"], [0, 0.25, 0.5, 0.75, 1])
  np.testing.assert_allclose(curve["loss"][[0, -1]], [eval_fn(a)["loss"], eval_fn(b)["loss"]],
                             rtol=1e-6)
  mid = jax.tree.map(lambda p, q: (p + q) / 2, a, b)
  np.testing.assert_allclose(curve["loss"][2], eval_fn(mid)["loss"], rtol=1e-6)


def _pre_activations(v, x):
  """The MLP's two hidden pre-activations, computed by hand in numpy."""
  p = jax.tree.map(np.asarray, v["params"])
  h0 = np.asarray(x).reshape(len(x), -1) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]
  h1 = np.maximum(h0, 0) @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
  return [h0, h1]


def test_repair_sets_every_unit_to_the_interpolated_statistics():
  model, a, _ = build("mlp", seed=0)
  _, b, _ = build("mlp", seed=1)
  x = jax.random.normal(jax.random.PRNGKey(9), (256, 28, 28, 1))
  assert I.unit_layers(model, a, x) == [("dense_0",), ("dense_1",)]
  lam = 0.5
  ends = [_pre_activations(a, x), _pre_activations(b, x)]
  plain = _pre_activations(I.interpolate(a, b, lam), x)
  fixed = _pre_activations(I.repair(model, a, b, lam, x), x)
  kept = _pre_activations(I.repair(model, a, b, lam, x, rescale_only=True), x)
  for k in range(2):
    mu_t = (1 - lam) * ends[0][k].mean(0) + lam * ends[1][k].mean(0)
    sd_t = (1 - lam) * ends[0][k].std(0) + lam * ends[1][k].std(0)
    np.testing.assert_allclose(fixed[k].mean(0), mu_t, atol=1e-4 * (1 + np.abs(mu_t).max()))
    np.testing.assert_allclose(fixed[k].std(0), sd_t, rtol=1e-3)
    np.testing.assert_allclose(kept[k].std(0), sd_t, rtol=1e-3)
  # RESCALE keeps the first layer's means (the later ones follow its corrected inputs)
  np.testing.assert_allclose(kept[0].mean(0), plain[0].mean(0), atol=1e-4)
  assert (plain[1].std(0) < sd_t).mean() > 0.5  # the variance collapse REPAIR undoes


def test_repair_at_an_endpoint_is_that_endpoint():
  model, a, _ = build("mlp", seed=0)
  _, b, _ = build("mlp", seed=1)
  x = jax.random.normal(jax.random.PRNGKey(9), (128, 28, 28, 1))
  got = I.repair(model, a, b, 0.0, x)
  for p, q in zip(jax.tree.leaves(got), jax.tree.leaves(a)):
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


def test_resnet_repairs_its_norm_layers():
  model, a, x = build("resnet", seed=0)
  _, b, _ = build("resnet", seed=1)
  layers = I.unit_layers(model, a, x)
  assert ("stem_norm",) in layers and ("stage_0_block_0", "norm_0") in layers
  fixed = I.repair(model, a, b, 0.5, x)
  stats = I.unit_stats(model, fixed, x, layers)
  targets = [I.unit_stats(model, v, x, layers) for v in (a, b)]
  for layer in layers:
    sd_t = 0.5 * (targets[0][layer][1] + targets[1][layer][1])
    np.testing.assert_allclose(stats[layer][1], sd_t, rtol=2e-3, atol=1e-5)
