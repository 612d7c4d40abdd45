"""The analysis tools under the stateful quantization policies (fp8_delayed: amax histories in
TrainState.extra; lsq_w4a8: learned steps initialised from the data): LR sweep, coordinate check
and depth diagnostics run, give finite numbers, carry the state (fp8 histories advance), and
agree with the plain train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, quant
from jaxlab.analysis import depth_diagnostics
from jaxlab.analysis.coord_check import activation_scales, coord_check
from jaxlab.analysis.lr_sweep import make_sweep, scan_train
from jaxlab.models.context import LayerContext
from jaxlab.train import core, step as step_lib, tasks
from jaxlab.train.state import TrainState

POLICIES = ("fp8_delayed", "lsq_w4a8")
RNG = np.random.default_rng(0)
T, B = 4, 16
TRAIN = {"image": RNG.standard_normal((T, B, 6)).astype(np.float32),
         "label": (np.arange(T * B) % 3).reshape(T, B)}
BATCH = jax.tree.map(lambda x: x[0], TRAIN)
V = 16
TOKENS = RNG.integers(0, V, (2, 9))
LM_BATCH = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}


def _mlp(name, width=16):
  return models.MLP(hidden_widths=(width, width), num_classes=3,
                    ctx=LayerContext(quant=quant.get(name)))


def _history(extra):
  return np.asarray(extra[quant.QUANT_STATE]["dense_1"]["weight"]["history"])


@pytest.mark.parametrize("name", POLICIES)
def test_lr_sweep(name):
  model = _mlp(name)
  train, final = make_sweep(model, optax.adam, tasks.CLASSIFICATION)(
      np.array([1e-3, 1e-2], np.float32), np.array([0, 1], np.uint32), TRAIN, BATCH)
  assert train.shape == (2, 2, T) and np.all(np.isfinite(train)) and np.all(np.isfinite(final))
  params, extra, losses = jax.jit(lambda s: scan_train(
      model, optax.adam(1e-2), tasks.CLASSIFICATION, s, TRAIN))(jnp.uint32(0))
  np.testing.assert_allclose(losses, train[1, 0], rtol=1e-5)
  if name == "fp8_delayed":  # one amax per step, newest first
    h = _history(extra)
    assert np.all(h[:T] > 0) and np.all(h[T:] == 0)
  else:
    assert extra == {} and "weight_step" in params["dense_1"]


@pytest.mark.parametrize("name", POLICIES)
def test_coord_check_reads_the_state_of_the_train_step(name):
  tx = optax.adam(1e-2)
  steps = 2
  out = coord_check(lambda w: (_mlp(name, w), tx), (8, 16), BATCH, tasks.CLASSIFICATION,
                    steps=steps)
  assert all(np.isfinite(v) for hist in out.values() for row in hist for v in row.values())
  # Independently: the plain train step's state after `steps` steps, its eval forward's logits.
  model = _mlp(name, 16)
  params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(0), BATCH["image"])
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     extra=jax.tree.map(jnp.copy, extra))
  for _ in range(steps):  # (donates the state)
    state, _ = step_lib.train_step(state, BATCH, model=model, tx=tx, task=tasks.CLASSIFICATION)
  logits = core.logits(model, state.params, state.extra, BATCH, tasks.CLASSIFICATION)
  np.testing.assert_allclose(out[16][steps]["logits"], float(jnp.mean(jnp.abs(logits))),
                             rtol=1e-5)
  if name == "fp8_delayed":
    assert np.all(_history(state.extra)[:steps] > 0)
    stale = activation_scales(model, state.params, BATCH["image"], extra)  # initial histories
    assert stale["logits"] != pytest.approx(out[16][steps]["logits"], rel=1e-7)


@pytest.mark.parametrize("name", POLICIES)
def test_depth_metrics(name):
  model = models.TransformerLM(vocab_size=V, d_model=16, num_layers=2, num_heads=2, max_len=16,
                               ctx=LayerContext(quant=quant.get(name)))
  params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(0), LM_BATCH["inputs"])
  _, _, grads, extra = core.loss_and_grads(model, params, extra, LM_BATCH, tasks.LM)
  row = step_lib.depth_metrics_step(params, extra, LM_BATCH, model=model, task=tasks.LM)
  assert {"depth/block_var/block_1", "depth/grad_norm/block_1",
          "depth/removal_loss_delta/block_0"} <= set(row)
  assert all(np.isfinite(float(v)) for v in row.values())
  # the base loss of the removal study is the train step's loss with the same state
  base = core.loss_and_metrics(model, params, extra, LM_BATCH, tasks.LM)[0]
  removal = depth_diagnostics.layer_removal_loss_delta(model, params, LM_BATCH, tasks.LM.loss,
                                                       extra=extra)
  np.testing.assert_allclose(removal["base_loss"], base, rtol=1e-5)
  if name == "fp8_delayed":
    assert np.any(np.asarray(extra[quant.QUANT_STATE]["block_0"]["attn"]["qkv"]["weight"]
                             ["history"]) > 0)

