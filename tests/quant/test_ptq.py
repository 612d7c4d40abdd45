"""Post-training quantization: calibration methods, integer export on the grid, error reports
against numpy, and int8 / int4 PTQ of a small MLP trained on the real digits data."""

import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import data, models, param
from jaxlab.models import layers
from jaxlab.quant import ptq
from jaxlab.quant import quantizers as qz

RNG = np.random.default_rng(0)


def train_digits_mlp(tfds_data_dir, steps=150):
  """MLP (32, 32) after `steps` Adam steps on digits, with 4 calibration batches and the test
  split (one batch of 359, mask all ones)."""
  cfg = {"name": "digits", "data_dir": tfds_data_dir, "task": "classification"}
  it = data.make_train_iterator(cfg, batch_size=64, seed=0)
  model = models.MLP(hidden_widths=(32, 32), num_classes=10)
  first = next(it)
  boxed = model.init(jax.random.key(0), first["image"])["params"]
  params, opt = param.unbox(boxed), optax.adam(1e-2)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    batch = next(it)
    params, opt_state = step(params, opt_state, batch["image"], batch["label"])
  return types.SimpleNamespace(
      model=model, params=params, info=param.param_info(boxed),
      calib=[next(it)["image"] for _ in range(4)],
      test=next(data.eval_batches(cfg, batch_size=359)))


@pytest.fixture(scope="module")
def mlp(tfds_data_dir):
  return train_digits_mlp(tfds_data_dir)


def quant_mse(x, qs):
  return float(np.mean((np.asarray(qs.fake_quant(jnp.asarray(x))) - x) ** 2))


# ---------------------------------------------------------------------------------------------
# Calibration of one tensor.


@pytest.mark.parametrize("kw,match", [
    (dict(method="minmax"), "calibration method 'minmax'.*absmax, percentile, mse"),
    (dict(granularity="per_token"), "granularity 'per_token'.*per_tensor, per_channel"),
    (dict(percentile=0.0), "percentile"),
    (dict(bits=9), "bits"),
    (dict(num_candidates=0), "num_candidates"),
])
def test_bad_options_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    ptq.compute_scale(jnp.ones((4, 3)), **kw)
  with pytest.raises(ValueError, match=match):
    ptq.quantize_params({"w": jnp.ones((4, 3))}, **kw)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_absmax_is_the_fake_quant_scale(symmetric, granularity):
  x = jnp.asarray(RNG.standard_normal((16, 8)) + 0.3, jnp.float32)
  qs = ptq.compute_scale(x, bits=8, symmetric=symmetric, granularity=granularity)
  axes = qz.reduce_axes(2, granularity, -1)
  scale, zero_point = qz.int_scale(x, 8, symmetric, axes)
  np.testing.assert_allclose(qs.scale, scale, rtol=1e-6)  # XLA may fuse jit / eager apart
  np.testing.assert_array_equal(qs.zero_point, zero_point)
  # The export dequantizes to exactly what the QAT fake quantizer computes with that scale.
  qt = ptq.quantize_tensor(x, qs)
  expect = qz.int_fake_quant_with_scale(x, qs.scale, qs.zero_point, bits=8, symmetric=symmetric)
  np.testing.assert_array_equal(qt.dequantize(), expect)


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_codes_and_zero_points_fit_int8(bits):
  x = jnp.asarray(RNG.uniform(-0.2, 1.0, (32, 6)), jnp.float32)
  qt = ptq.quantize_tensor(x, ptq.compute_scale(x, bits=bits, symmetric=False,
                                                granularity="per_channel"))
  assert qt.q.dtype == jnp.int8 and qt.zero_point.dtype == jnp.int8
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1  # the unsigned grid shifted by -2^(b-1)
  assert int(qt.q.min()) == lo and int(qt.q.max()) == hi  # the min and max of each column
  assert lo <= int(qt.zero_point.min()) and int(qt.zero_point.max()) <= hi
  step = np.asarray(qt.scale)
  assert np.max(np.abs(np.asarray(qt.dequantize()) - np.asarray(x)) / step) <= 0.5 + 1e-4


def test_mse_clipping_beats_absmax_on_heavy_tails():
  x = RNG.standard_t(df=4, size=4096).astype(np.float32)  # heavy-tailed (kurtosis = inf)
  for bits, ratio in ((4, 0.5), (8, 1.0)):
    absmax = ptq.compute_scale(x, bits=bits, method="absmax")
    mse = ptq.compute_scale(x, bits=bits, method="mse", num_candidates=100)
    assert quant_mse(x, mse) < ratio * quant_mse(x, absmax)
    # It is the grid minimiser: brute force over the same 100 clipping thresholds in numpy.
    qmax = 2 ** (bits - 1) - 1
    clips = np.abs(x).max() * np.arange(1, 101, dtype=np.float32) / 100

    def err(c):
      s = np.float32(c / qmax)
      return np.mean((np.clip(np.round(x / s), -qmax, qmax) * s - x) ** 2)

    best = clips[np.argmin([err(c) for c in clips])]
    np.testing.assert_allclose(mse.scale.item() * qmax, best, rtol=1e-6)


def test_mse_per_channel_asymmetric_never_worse_than_absmax():
  x = RNG.standard_t(4, size=(1024, 4)).astype(np.float32) * np.float32([1, 3, 10, 0.1])
  kw = dict(bits=4, symmetric=False, granularity="per_channel")
  absmax = ptq.compute_scale(x, method="absmax", **kw)
  mse = ptq.compute_scale(x, method="mse", **kw)
  assert mse.scale.shape == (1, 4)
  err = lambda qs: np.mean((np.asarray(qs.fake_quant(jnp.asarray(x))) - x) ** 2, 0)  # noqa
  assert np.all(err(mse) <= err(absmax)) and np.any(err(mse) < 0.7 * err(absmax))


def test_percentile_clips_outliers():
  x = RNG.standard_normal(20000).astype(np.float32)
  x[:3] = [50.0, -80.0, 120.0]
  qs = ptq.compute_scale(x, bits=8, method="percentile", percentile=99.9)
  clip = qs.scale.item() * 127
  np.testing.assert_allclose(clip, np.percentile(np.abs(x), 99.9), rtol=1e-5)
  assert clip < 5
  qt = ptq.quantize_tensor(x, qs)
  np.testing.assert_array_equal(np.asarray(qt.q[:3]), [127, -127, 127])  # saturated
  asym = ptq.compute_scale(x, bits=8, symmetric=False, method="percentile", percentile=99.9)
  lo, hi = np.percentile(x, 0.1), np.percentile(x, 99.9)
  np.testing.assert_allclose(asym.scale.item() * 255, hi - lo, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Export of the trained MLP.


def test_int8_per_channel_weights_on_the_integer_grid(mlp):
  qparams = ptq.quantize_params(mlp.params, mlp.info, bits=8, granularity="per_channel")
  for name in ("dense_0", "dense_1", "readout"):
    w, qt = np.asarray(mlp.params[name]["kernel"]), qparams[name]["kernel"]
    assert isinstance(qt, ptq.QuantizedTensor) and qt.q.dtype == jnp.int8
    assert qt.zero_point is None and qt.scale.shape == (1, w.shape[1])
    s = np.abs(w).max(axis=0, keepdims=True) / np.float32(127)
    np.testing.assert_allclose(qt.scale, s, rtol=1e-6)
    np.testing.assert_array_equal(qt.q, np.round(w / np.asarray(qt.scale)))
    assert np.abs(np.asarray(qt.q)).max() == 127  # each column's max lands on the end point
    deq = np.asarray(ptq.dequantize(qparams)[name]["kernel"])
    np.testing.assert_array_equal(deq, np.asarray(qt.q, np.float32) * np.asarray(qt.scale))
    assert np.linalg.norm(w - deq) / np.linalg.norm(w) < 0.01
    # Biases stay float.
    assert qparams[name]["bias"] is mlp.params[name]["bias"]


def test_roles_and_keep_float_choose_the_quantized_leaves(mlp):
  no_info = ptq.quantize_params(mlp.params, bits=8)  # unboxed, no info: rank >= 2 leaves
  assert ptq.float_layers(mlp.info) == "dense_0|readout"  # the input- and readout-role weights
  with_info = ptq.quantize_params(mlp.params, mlp.info, bits=8,
                                  keep_float=ptq.float_layers(mlp.info))
  for name in ("dense_0", "dense_1", "readout"):
    assert isinstance(no_info[name]["kernel"], ptq.QuantizedTensor)
    assert not isinstance(no_info[name]["bias"], ptq.QuantizedTensor)
  assert isinstance(with_info["dense_1"]["kernel"], ptq.QuantizedTensor)
  assert with_info["dense_0"]["kernel"] is mlp.params["dense_0"]["kernel"]
  assert with_info["readout"]["kernel"] is mlp.params["readout"]["kernel"]
  boxed = mlp.model.init(jax.random.key(0), mlp.calib[0])["params"]  # roles from the boxes
  from_boxes = ptq.quantize_params(boxed, bits=8)
  assert isinstance(from_boxes["dense_1"]["kernel"], ptq.QuantizedTensor)
  assert isinstance(from_boxes["dense_1"]["bias"], jax.Array)  # unboxed, float


def test_report_agrees_with_numpy(mlp):
  qparams = ptq.quantize_params(mlp.params, mlp.info, bits=4, granularity="per_tensor",
                                method="mse")
  report = ptq.error_report(mlp.params, qparams, model=mlp.model, batches=[mlp.test])
  assert set(report["weights"]) == {"dense_0/kernel", "dense_1/kernel", "readout/kernel"}
  for path, r in report["weights"].items():
    name = path.split("/")[0]
    w = np.asarray(mlp.params[name]["kernel"], np.float64)
    qt = qparams[name]["kernel"]
    w_hat = (np.asarray(qt.q, np.float32) * np.asarray(qt.scale)).astype(np.float64)
    err = w - w_hat
    np.testing.assert_allclose(r["rel_error"], np.sqrt((err ** 2).sum() / (w ** 2).sum()),
                               rtol=1e-6)
    np.testing.assert_allclose(r["max_abs_error"], np.abs(err).max(), rtol=1e-6)
    np.testing.assert_allclose(r["sqnr_db"], 10 * np.log10((w ** 2).sum() / (err ** 2).sum()),
                               rtol=1e-6)
    np.testing.assert_allclose(r["sqnr_db"], -20 * np.log10(r["rel_error"]), rtol=1e-9)
  x, y = mlp.test["image"], mlp.test["label"]
  z = np.asarray(mlp.model.apply({"params": mlp.params}, x), np.float64)
  zq = np.asarray(mlp.model.apply({"params": ptq.dequantize(qparams)}, x), np.float64)
  m = report["model"]
  assert m["num_examples"] == 359
  np.testing.assert_allclose(m["logits_rel_error"], np.linalg.norm(z - zq) / np.linalg.norm(z),
                             rtol=1e-6)
  assert m["top1_agreement"] == np.mean(z.argmax(1) == zq.argmax(1))
  assert m["float_accuracy"] == np.mean(z.argmax(1) == y)
  assert m["quant_accuracy"] == np.mean(zq.argmax(1) == y)
  assert "dense_1/kernel" in ptq.format_report(report)


def test_tensor_error_of_an_exact_copy():
  r = ptq.tensor_error(np.ones(3), np.ones(3))
  assert r == {"rel_error": 0.0, "max_abs_error": 0.0, "sqnr_db": math.inf}


def test_int8_ptq_keeps_top1_and_int4_is_worse(mlp):
  reports = {}
  for bits in (8, 4):
    qparams = ptq.quantize_params(mlp.params, mlp.info, bits=bits, granularity="per_channel")
    reports[bits] = ptq.error_report(mlp.params, qparams, model=mlp.model, batches=[mlp.test])
  assert reports[8]["model"]["float_accuracy"] > 0.9  # the model did learn
  assert reports[8]["model"]["top1_agreement"] > 0.95
  assert reports[4]["model"]["logits_rel_error"] > 5 * reports[8]["model"]["logits_rel_error"]
  for path, r8 in reports[8]["weights"].items():
    r4 = reports[4]["weights"][path]
    assert r4["rel_error"] > 5 * r8["rel_error"] and r4["sqnr_db"] < r8["sqnr_db"] - 15


# ---------------------------------------------------------------------------------------------
# Activations.


def test_layer_inputs_are_the_inputs_of_every_dense(mlp):
  p, x = mlp.params, mlp.calib[:2]
  inputs = ptq.layer_inputs(mlp.model, p, x)
  assert list(inputs) == ["dense_0", "dense_1", "readout"]
  h0 = np.concatenate([np.reshape(b, (len(b), -1)) for b in x])
  dense = lambda h, n: h @ np.asarray(p[n]["kernel"]) + np.asarray(p[n]["bias"])  # noqa
  h1 = np.maximum(dense(h0, "dense_0"), 0)
  h2 = np.maximum(dense(h1, "dense_1"), 0)
  for name, h in (("dense_0", h0), ("dense_1", h1), ("readout", h2)):
    np.testing.assert_allclose(inputs[name], h, rtol=1e-5, atol=1e-5)


def test_calibration_methods_and_granularities(mlp):
  scales = {m: ptq.calibrate_activations(mlp.model, mlp.params, mlp.calib, method=m,
                                         percentile=99.0)
            for m in ptq.METHODS}
  inputs = ptq.layer_inputs(mlp.model, mlp.params, mlp.calib)
  for name, x in inputs.items():
    absmax = float(scales["absmax"][name].scale)
    np.testing.assert_allclose(absmax, np.abs(np.asarray(x)).max() / 127, rtol=1e-6)
    # <= : most digit pixels reach 1.0, so the 99th percentile of the input is its max.
    assert float(scales["percentile"][name].scale) <= absmax
    if name != "dense_0":
      assert float(scales["percentile"][name].scale) < absmax
    assert float(scales["mse"][name].scale) <= absmax
    assert quant_mse(np.asarray(x), scales["mse"][name]) <= quant_mse(np.asarray(x),
                                                                      scales["absmax"][name])
  per_channel = ptq.calibrate_activations(mlp.model, mlp.params, mlp.calib,
                                          granularity="per_channel", symmetric=False, bits=4)
  assert per_channel["dense_1"].scale.shape == (32,)
  assert per_channel["dense_1"].zero_point.shape == (32,)
  assert int(per_channel["dense_1"].zero_point.max()) == 0  # ReLU outputs: lo = 0 -> Z = qmin


def test_static_activation_quant_matches_a_manual_forward(mlp):
  p, x = mlp.params, mlp.test["image"]
  acts = ptq.calibrate_activations(mlp.model, p, mlp.calib, bits=8)
  qparams = ptq.quantize_params(p, mlp.info, bits=8)
  w = ptq.dequantize(qparams)
  h = jnp.reshape(x, (len(x), -1))
  for name in ("dense_0", "dense_1", "readout"):
    s = acts[name].scale
    h = jnp.clip(jnp.round(h / s), -127, 127) * s
    h = h @ w[name]["kernel"] + w[name]["bias"]
    h = jax.nn.relu(h) if name != "readout" else h
  out = ptq.quantized_apply(mlp.model, qparams, x, act_scales=acts)
  np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)
  weight_only = ptq.quantized_apply(mlp.model, qparams, x)
  assert not np.allclose(out, weight_only, atol=1e-6)  # the activations were quantized
  report = ptq.model_report(mlp.model, p, qparams, [mlp.test], act_scales=acts)
  assert report["top1_agreement"] > 0.95


def test_feature_major_dense_gets_per_channel_scales_on_its_feature_axis():
  block = layers.FeedForward(hidden=8, activation="relu")
  x = jnp.asarray(RNG.standard_normal((2, 3, 4)), jnp.float32)
  params = nn.meta.unbox(block.init(jax.random.key(1), x))["params"]
  acts = ptq.calibrate_activations(block, params, [x], granularity="per_channel")
  assert acts["up"].scale.shape == (4,) and acts["down"].scale.shape == (8,)
  np.testing.assert_allclose(acts["up"].scale, np.abs(np.asarray(x)).max((0, 1)) / 127,
                             rtol=1e-6)
  out = ptq.quantized_apply(block, params, x, act_scales=acts)
  np.testing.assert_allclose(out, block.apply({"params": params}, x), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("use_bias", [True, False])
def test_int8_matmul_engine_matches_fake_quant(monkeypatch, use_bias):
  """quantized_apply(int8_matmul=True) runs every eligible Dense through
  pallas_kernels.int8_matmul and agrees with the fake-quant network to float rounding."""
  import pallas_kernels
  model = models.MLP(hidden_widths=(16, 16), num_classes=5, use_bias=use_bias)
  x = jnp.asarray(RNG.normal(size=(8, 12)), jnp.float32)
  boxed = model.init(jax.random.key(0), x)["params"]
  qparams = ptq.quantize_params(boxed)  # every Dense, readout included, int8 per channel
  scales = ptq.calibrate_activations(model, boxed, [x])
  calls = []
  real = pallas_kernels.int8_matmul
  monkeypatch.setattr(pallas_kernels, "int8_matmul", lambda *a, **k: calls.append(1) or real(
      *a, **k))
  fake = ptq.quantized_apply(model, qparams, x, act_scales=scales)
  assert not calls
  got = ptq.quantized_apply(model, qparams, x, act_scales=scales, int8_matmul=True)
  assert len(calls) == 3
  np.testing.assert_allclose(got, fake, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(fake))))
  per_channel = ptq.calibrate_activations(model, boxed, [x], granularity="per_channel")
  ptq.quantized_apply(model, qparams, x, act_scales=per_channel, int8_matmul=True)
  assert len(calls) == 3  # per-channel input scales have no int8 matmul form: fake quant
