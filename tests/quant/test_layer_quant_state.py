"""State that Dense / Conv own for their QuantConfig: LSQ learned steps (params) and the named
policies that use it (`lsq_w4a8`, `fp8_delayed`)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlab import models, param, quant, sharding
from jaxlab.models import layers
from jaxlab.param import roles
from jaxlab.quant import LSQFormat, QuantConfig, QuantPolicy
from jaxlab.train import step as step_lib, tasks
from jaxlab.train.init import init_state
from jaxlab.models.context import LayerContext

RNG = np.random.default_rng(0)
LSQ = QuantPolicy(rules=((r".*", QuantConfig(weight=LSQFormat(4), activation=LSQFormat(8))),),
                  name="lsq_test")


def np_lsq(v, s, bits):
  qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return np.round(np.clip(v / s, qn, qp)) * s


@pytest.mark.parametrize("feature_major", [False, True])
def test_dense_lsq_steps_init_from_the_init_input(feature_major):
  x = (RNG.standard_normal((6, 5)) * 3).astype(np.float32)  # [tokens, fan_in] or [fan_in, N]
  dense = layers.Dense(4, feature_major=feature_major, ctx=LayerContext(quant=LSQ))
  v = dense.init(jax.random.PRNGKey(0), x)
  info = param.param_info(v["params"])
  p = param.unbox(v["params"])
  assert set(p) == {"kernel", "bias", "weight_step", "activation_step"}
  assert info["weight_step"].role == info["activation_step"].role == roles.BIAS
  w = np.asarray(p["kernel"])
  np.testing.assert_allclose(p["weight_step"], 2 * np.abs(w).mean() / math.sqrt(7), rtol=1e-6)
  np.testing.assert_allclose(p["activation_step"], 2 * np.abs(x).mean() / math.sqrt(127),
                             rtol=1e-6)
  sw, sx = float(p["weight_step"]), float(p["activation_step"])
  y = dense.apply({"params": p}, x)
  wq, xq = np_lsq(w, sw, 4), np_lsq(x, sx, 8)
  ref = (wq.T @ xq + np.asarray(p["bias"])[:, None]) if feature_major else (
      xq @ wq + np.asarray(p["bias"]))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(jnp.sin(dense.apply({"params": p}, x))))(p)
  assert np.isfinite(grads["weight_step"]) and grads["weight_step"] != 0
  assert np.isfinite(grads["activation_step"]) and grads["activation_step"] != 0


def test_zero_init_input_falls_back_to_unit_mean_abs():
  dense = layers.Dense(3, ctx=LayerContext(quant=LSQ))
  p = param.unbox(dense.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)))["params"])
  np.testing.assert_allclose(p["activation_step"], 2 / math.sqrt(127), rtol=1e-6)


def test_conv_lsq_steps_receive_gradients():
  x = RNG.standard_normal((2, 5, 5, 3)).astype(np.float32)
  conv = layers.Conv(4, 3, ctx=LayerContext(quant=LSQ))
  p = param.unbox(jax.jit(conv.init)(jax.random.PRNGKey(0), x)["params"])
  np.testing.assert_allclose(p["activation_step"], 2 * np.abs(x).mean() / math.sqrt(127),
                             rtol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x) ** 2)))(p)
  assert grads["weight_step"] != 0 and grads["activation_step"] != 0


def test_named_policies():
  assert {"fp8_delayed", "lsq_w4a8"} <= set(quant.names())
  lsq = quant.get("lsq_w4a8")
  assert lsq.needs_data_init and not quant.get("int8").needs_data_init
  cfg = lsq.config_for("dense_1")
  assert (cfg.weight, cfg.activation) == (LSQFormat(4), LSQFormat(8))
  assert lsq.config_for("dense_0", roles.INPUT) is None
  assert lsq.config_for("readout", roles.READOUT) is None


def test_lsq_w4a8_mlp_trains():
  """The real train step on a tiny MLP under lsq_w4a8: loss falls, the steps move."""
  centers = RNG.standard_normal((3, 10)).astype(np.float32) * 2
  labels = np.arange(96) % 3
  x = centers[labels] + 0.5 * RNG.standard_normal((96, 10)).astype(np.float32)
  batch = {"image": x, "label": labels}
  model = models.MLP(hidden_widths=(32, 32), num_classes=3,
                     ctx=LayerContext(quant=quant.get("lsq_w4a8")))
  tx = optax.adam(3e-3)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}))
  state, _ = init_state(model, tx, jnp.asarray(x), 0, mesh)
  p0 = jax.tree.map(np.asarray, state.params)
  h = np.maximum(x @ p0["dense_0"]["kernel"] + p0["dense_0"]["bias"], 0)  # dense_1's init input
  np.testing.assert_allclose(p0["dense_1"]["activation_step"],
                             2 * np.abs(h).mean() / math.sqrt(127), rtol=1e-5)
  losses = []
  for _ in range(40):
    state, m = step_lib.train_step(state, batch, model=model, tx=tx, task=tasks.CLASSIFICATION)
    losses.append(float(m["loss"]))
  assert np.mean(losses[-5:]) < 0.5 * losses[0]
  for name in ("weight_step", "activation_step"):
    assert state.params["dense_1"][name] != p0["dense_1"][name], name
