"""Data-free quantization (Nagel et al. 2019): cross-layer equalization keeps the function and
equalizes the channel ranges; bias correction removes the mean output shift of quantization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import param
from jaxlab.quant import equalization as eq
from jaxlab.quant import ptq
from tests.quant.test_ptq import train_digits_mlp

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def mlp(tfds_data_dir):
  return train_digits_mlp(tfds_data_dir)


def rel_diff(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def skew_channels(params, names, seed=1, spread=3.0):
  """A function-preserving rescaling of the hidden channels by exp(U(-spread, spread)): the
  ranges CLE has to undo (relu(z c) / c = relu(z) for c > 0)."""
  rng, out = np.random.default_rng(seed), dict(params)
  for a, b in zip(names[:-1], names[1:]):
    c = np.exp(rng.uniform(-spread, spread, params[a]["kernel"].shape[1])).astype(np.float32)
    out[a] = dict(out[a], kernel=out[a]["kernel"] * c)
    if "bias" in out[a]:
      out[a]["bias"] = out[a]["bias"] * c
    out[b] = dict(out[b], kernel=out[b]["kernel"] / c[:, None])
  return out


# ---------------------------------------------------------------------------------------------
# Cross-layer equalization.


def test_equalize_pair_keeps_the_function_and_equalizes_the_ranges():
  w1 = RNG.standard_normal((16, 24)).astype(np.float32) * np.exp(RNG.uniform(-3, 3, 24))
  w1 = jnp.asarray(w1, jnp.float32)
  b1 = jnp.asarray(RNG.standard_normal(24), jnp.float32)
  w2 = jnp.asarray(RNG.standard_normal((24, 8)), jnp.float32)
  x = jnp.asarray(RNG.standard_normal((64, 16)), jnp.float32)
  f = lambda a, b, c: jax.nn.relu(x @ a + b) @ c  # noqa: E731
  v1, c1, v2, s = eq.equalize_pair(w1, b1, w2)
  assert rel_diff(f(v1, c1, v2), f(w1, b1, w2)) < 1e-5
  r1, r2 = eq.pair_ranges(w1, w2)
  q1, q2 = eq.pair_ranges(v1, v2)
  np.testing.assert_allclose(s, np.sqrt(r1 / r2), rtol=1e-6)
  np.testing.assert_allclose(q1, q2, rtol=1e-6)
  np.testing.assert_allclose(q1, np.sqrt(r1 * r2), rtol=1e-6)
  # A dead channel (zero column) keeps s = 1 instead of dividing by zero.
  _, _, _, s = eq.equalize_pair(w1.at[:, 3].set(0), None, w2)
  assert s[3] == 1.0 and np.all(np.isfinite(s))


def test_equalize_mlp_keeps_logits_and_equalizes_every_pair(mlp):
  names = eq.mlp_layer_names(mlp.params)
  assert names == ["dense_0", "dense_1", "readout"]
  skewed = skew_channels(mlp.params, names)
  cle = eq.equalize_mlp(skewed)
  x = mlp.test["image"]
  logits = mlp.model.apply({"params": mlp.params}, x)
  assert rel_diff(mlp.model.apply({"params": skewed}, x), logits) < 1e-5
  assert rel_diff(mlp.model.apply({"params": cle}, x), logits) < 1e-5
  for a, b in zip(names[:-1], names[1:]):
    r1, r2 = eq.pair_ranges(skewed[a]["kernel"], skewed[b]["kernel"])
    assert np.max(np.abs(np.log(r1 / r2))) > 1  # unequal before
    q1, q2 = eq.pair_ranges(cle[a]["kernel"], cle[b]["kernel"])
    np.testing.assert_allclose(q1, q2, rtol=1e-4)


def test_equalization_rescues_per_tensor_quantization(mlp):
  """What CLE is for: per-tensor scales fail when channel ranges differ (Nagel et al. 2019)."""
  skewed = skew_channels(mlp.params, eq.mlp_layer_names(mlp.params))
  errors = {}
  for name, p in (("skewed", skewed), ("cle", eq.equalize_mlp(skewed))):
    qparams = ptq.quantize_params(p, mlp.info, bits=8, granularity="per_tensor")
    errors[name] = ptq.model_report(mlp.model, p, qparams, [mlp.test])
  assert errors["skewed"]["top1_agreement"] < 0.9
  assert errors["cle"]["top1_agreement"] > 0.95
  assert errors["cle"]["logits_rel_error"] < 0.2 * errors["skewed"]["logits_rel_error"]


def test_equalize_mlp_without_biases_and_boxed_params(mlp):
  model = mlp.model.clone(use_bias=False)
  x = mlp.calib[0]
  boxed = {name: {"kernel": layer["kernel"]}
           for name, layer in model.init(jax.random.key(0), x)["params"].items()}
  cle = eq.equalize_mlp(boxed)
  assert isinstance(cle["dense_1"]["kernel"], param.ParamMeta)  # metadata kept
  assert set(cle["dense_1"]) == {"kernel"}
  z = model.apply({"params": param.unbox(boxed)}, x)
  assert rel_diff(model.apply({"params": param.unbox(cle)}, x), z) < 1e-5


@pytest.mark.parametrize("call,match", [
    (lambda p: eq.equalize_mlp(p, activation="gelu"), "activation 'gelu'.*relu, identity"),
    (lambda p: eq.equalize_mlp({"readout": p["readout"]}), "at least 2 Dense layers"),
    (lambda p: eq.equalize_mlp({"dense_1": p["dense_1"], "readout": p["readout"]}),
     "dense_0"),
    (lambda p: eq.equalize_chain(p, ["dense_0", "conv"]), "conv"),
    (lambda p: eq.equalize_chain(p, ["dense_0", "dense_1"], max_iter=0), "max_iter"),
    (lambda p: eq.equalize_pair(p["dense_0"]["kernel"], None, p["readout"]["kernel"].T),
     "do not chain"),
])
def test_errors_name_the_problem(call, match, mlp):
  with pytest.raises(ValueError, match=match):
    call(mlp.params)


# ---------------------------------------------------------------------------------------------
# Bias correction.


def test_bias_correction_matches_the_float_mean_output():
  x = jnp.asarray(np.maximum(RNG.standard_normal((512, 32)), 0) + 0.5, jnp.float32)  # E[x] != 0
  w = jnp.asarray(RNG.standard_normal((32, 16)) * 0.3, jnp.float32)
  b = jnp.asarray(RNG.standard_normal(16), jnp.float32)
  w_q = ptq.quantize_tensor(w, ptq.compute_scale(w, bits=3)).dequantize()
  float_mean = jnp.mean(x @ w + b, axis=0)
  before = jnp.mean(x @ w_q + b, axis=0)
  after = jnp.mean(x @ w_q + eq.bias_correction(w, b, w_q, jnp.mean(x, axis=0)), axis=0)
  assert np.max(np.abs(before - float_mean)) > 0.1
  np.testing.assert_allclose(after, float_mean, atol=1e-5)


def test_correct_biases_on_the_trained_mlp(mlp):
  qparams = ptq.quantize_params(mlp.params, mlp.info, bits=4, granularity="per_tensor")
  corrected = eq.correct_biases(mlp.model, mlp.params, qparams, mlp.calib)
  for name in ("dense_0", "dense_1", "readout"):  # kernels untouched, biases moved
    assert corrected[name]["kernel"] is qparams[name]["kernel"]
    assert not np.allclose(corrected[name]["bias"], qparams[name]["bias"])
  # Per layer, on the float model's inputs of that layer: mean outputs now match.
  inputs = ptq.layer_inputs(mlp.model, mlp.params, mlp.calib)
  w_q, w_c = ptq.dequantize(qparams), ptq.dequantize(corrected)
  for name, x in inputs.items():
    float_mean = jnp.mean(x @ mlp.params[name]["kernel"] + mlp.params[name]["bias"], axis=0)
    before = jnp.mean(x @ w_q[name]["kernel"] + w_q[name]["bias"], axis=0)
    after = jnp.mean(x @ w_c[name]["kernel"] + w_c[name]["bias"], axis=0)
    assert np.max(np.abs(before - float_mean)) > 0.05
    np.testing.assert_allclose(after, float_mean, atol=2e-5)
  # End to end (every layer quantized, inputs no longer float): the logits' mean shift drops.
  x = np.concatenate(mlp.calib)
  z = mlp.model.apply({"params": mlp.params}, x)
  shift = lambda qp: np.abs(np.mean(ptq.quantized_apply(mlp.model, qp, x) - z, 0)).max()  # noqa
  assert shift(corrected) < 0.5 * shift(qparams)
  assert (ptq.model_report(mlp.model, mlp.params, corrected, [mlp.test])["logits_rel_error"]
          < ptq.model_report(mlp.model, mlp.params, qparams, [mlp.test])["logits_rel_error"])
