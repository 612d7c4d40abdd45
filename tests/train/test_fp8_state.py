"""fp8 delayed scaling carried by the train state: histories updated every step, used for the
scales, saved and restored by the orbax checkpoint."""

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import optax
import pytest

from jaxlab import models, param, quant, sharding
from jaxlab.models import layers
from jaxlab.quant import FP8Format, QuantConfig, QuantPolicy, fp8
from jaxlab.train import checkpoint, step as step_lib, tasks
from jaxlab.train.init import init_state
from jaxlab.models.context import LayerContext

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 6)).astype(np.float32)
Y = np.arange(16) % 3
BATCH = {"image": X, "label": Y}
TX = optax.adam(1e-2)
H = 4  # history length of the test policy


def policy(history_length=H):
  cfg = QuantConfig(weight=FP8Format("e4m3", scaling="delayed", history_length=history_length),
                    activation=FP8Format("e4m3", scaling="delayed",
                                         history_length=history_length),
                    gradient=FP8Format("e5m2", scaling="delayed", history_length=history_length))
  return QuantPolicy(rules=((r".*", cfg),), name="delayed_test")


def mlp(quant_policy=None):
  return models.MLP(hidden_widths=(16, 16), num_classes=3,
                    ctx=LayerContext(quant=quant_policy or policy()))


def fresh_state(model):
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}))
  state, _ = init_state(model, TX, jnp.zeros((1, 6)), 0, mesh)
  return state


def host(tree):
  return jax.tree.map(np.asarray, tree)


def run(state, model, n):
  losses = []
  for _ in range(n):
    state, m = step_lib.train_step(state, BATCH, model=model, tx=TX, task=tasks.CLASSIFICATION)
    losses.append(float(m["loss"]))
  return state, losses


def to_fp8(v, scale, dtype):
  """Reference fake quant in numpy (ml_dtypes cast after saturation)."""
  m = float(ml_dtypes.finfo(dtype).max)
  return np.clip(np.asarray(v, np.float32) / scale, -m, m).astype(dtype).astype(np.float32) * scale


def test_float_state_has_no_extra():
  assert fresh_state(mlp(quant.NO_QUANT)).extra == {}


def test_named_policy_fp8_delayed():
  p = quant.get("fp8_delayed")
  def delayed(cfg):
    return tuple(r for r in ("weight", "activation", "gradient") if getattr(cfg, r).delayed)

  assert delayed(p.config_for("dense_1")) == ("weight", "activation", "gradient")
  assert delayed(p.config_for("embed")) == ()  # tied readout: no state, current scaling
  state = fresh_state(mlp(p))
  leaf = state.extra[quant.QUANT_STATE]["dense_1"]["gradient"]
  assert leaf["history"].shape == (16,) and leaf["probe"].shape == ()


def test_train_steps_update_histories():
  model = mlp()
  state = fresh_state(model)
  qs0 = host(state.extra[quant.QUANT_STATE])
  assert all(np.all(v == 0) for v in jax.tree.leaves(qs0))
  state, _ = run(state, model, 2)
  before = host(state)  # the state the third step starts from (train_step donates it)
  state, _ = run(state, model, 1)
  qs = host(state.extra[quant.QUANT_STATE])
  for layer in ("dense_0", "dense_1", "readout"):
    for role in ("weight", "activation", "gradient"):
      h = qs[layer][role]["history"]
      assert np.all(h[:3] > 0) and np.all(h[3:] == 0), (layer, role, h)
      np.testing.assert_array_equal(h[1:3], before.extra[quant.QUANT_STATE][layer][role]
                                    ["history"][:2])  # shifted by one
      assert qs[layer][role]["probe"] == 0
  # this step's amaxes at index 0: weights before the update, the data, dL/dlogits
  for layer in ("dense_0", "dense_1", "readout"):
    assert qs[layer]["weight"]["history"][0] == np.abs(before.params[layer]["kernel"]).max()
  assert qs["dense_0"]["activation"]["history"][0] == np.abs(X).max()
  logits = model.apply({"params": before.params,
                        quant.QUANT_STATE: before.extra[quant.QUANT_STATE]}, X)
  g = (jax.nn.softmax(logits) - jax.nn.one_hot(Y, 3)) / len(Y)
  np.testing.assert_allclose(qs["readout"]["gradient"]["history"][0], np.abs(g).max(), rtol=1e-5)


def test_checkpoint_restores_histories_and_next_loss(tmp_path):
  model = mlp()
  state, _ = run(fresh_state(model), model, 3)
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  assert checkpoint.save(manager, state, {"position": 3}) == 3
  saved = host(state)
  restored, data_state = checkpoint.restore_latest(manager, fresh_state(model))
  manager.close()
  assert data_state == {"position": 3} and int(restored.step) == 3
  jax.tree.map(np.testing.assert_array_equal, host(restored.extra), saved.extra)
  assert np.any(saved.extra[quant.QUANT_STATE]["dense_1"]["gradient"]["history"] > 0)
  _, (loss_a,) = run(state, model, 1)
  restored_state, (loss_b,) = run(restored, model, 1)
  assert loss_a == loss_b
  assert np.any(host(restored_state.extra[quant.QUANT_STATE])["readout"]["weight"]["history"]
                != saved.extra[quant.QUANT_STATE]["readout"]["weight"]["history"])


def test_quantized_values_use_the_history_scale():
  """Forward operands and the output cotangent are quantized with scale_from_history of their
  own histories (not the current amax); the probes' cotangents are this call's amaxes."""
  dense = layers.Dense(5, ctx=LayerContext(quant=policy()))
  x = jnp.asarray(RNG.standard_normal((4, 6)), jnp.float32)
  v = dense.init(jax.random.PRNGKey(0), x)
  params = param.unbox(v["params"])
  qs = v[quant.QUANT_STATE]
  qs = {"weight": dict(qs["weight"], history=jnp.asarray([0.5, 3.0, 0.0, 1.0])),
        "activation": dict(qs["activation"], history=jnp.asarray([40.0, 0.0, 0.0, 0.0])),
        "gradient": dict(qs["gradient"], history=jnp.asarray([1e-3, 2e-3, 0.0, 0.0]))}
  g_out = jnp.asarray(RNG.standard_normal((4, 5)), jnp.float32) * 0.01

  def f(x, qs):
    y = dense.apply({"params": params, quant.QUANT_STATE: qs}, x)
    return jnp.sum(y * g_out), y

  (_, y), (dx, dqs) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, qs)
  sw = float(fp8.scale_from_history(qs["weight"]["history"], "e4m3"))
  sx = float(fp8.scale_from_history(qs["activation"]["history"], "e4m3"))
  sg = float(fp8.scale_from_history(qs["gradient"]["history"], "e5m2"))
  assert (sw, sx) == pytest.approx((3.0 / 448, 40.0 / 448))
  w = np.asarray(params["kernel"])
  wq, xq = to_fp8(w, sw, ml_dtypes.float8_e4m3fn), to_fp8(x, sx, ml_dtypes.float8_e4m3fn)
  np.testing.assert_allclose(y, xq @ wq + np.asarray(params["bias"]), rtol=1e-6, atol=1e-7)
  current = to_fp8(x, np.abs(x).max() / 448, ml_dtypes.float8_e4m3fn)
  assert not np.allclose(current @ wq, xq @ wq, rtol=1e-6)  # the history scale was used
  gq = to_fp8(g_out, sg, ml_dtypes.float8_e5m2)
  np.testing.assert_allclose(dx, gq @ wq.T, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose([dqs[r]["probe"] for r in ("weight", "activation", "gradient")],
                             [np.abs(w).max(), np.abs(x).max(), np.abs(g_out).max()], rtol=1e-6)
  assert all(np.all(dqs[r]["history"] == 0) for r in dqs)


def test_conv_keeps_histories_too():
  conv = layers.Conv(4, 3, ctx=LayerContext(quant=policy()))
  x = jnp.asarray(RNG.standard_normal((2, 5, 5, 3)), jnp.float32)
  v = conv.init(jax.random.PRNGKey(0), x)
  assert set(v[quant.QUANT_STATE]) == {"weight", "activation", "gradient"}

  def loss(qs):
    return jnp.sum(conv.apply({"params": v["params"], quant.QUANT_STATE: qs}, x) ** 2)

  dqs = jax.grad(loss)(v[quant.QUANT_STATE])
  new = conv.ctx.quant.next_state(v[quant.QUANT_STATE], dqs)
  assert float(new["activation"]["history"][0]) == pytest.approx(float(jnp.abs(x).max()))
  assert float(new["gradient"]["history"][0]) > 0


def test_missing_histories_are_named():
  model = mlp()
  params = fresh_state(model).params
  with pytest.raises(ValueError, match="'dense_0' uses fp8 scaling='delayed'.*'quant_state'"):
    model.apply({"params": params}, X)
  with pytest.raises(ValueError, match="granularity must be 'per_tensor'"):
    FP8Format(scaling="delayed", granularity="per_channel")
