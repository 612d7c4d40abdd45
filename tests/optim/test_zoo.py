"""Every zoo entry (but shampoo/soap) against an independent reference: the optax function
called directly with the same non-default hyperparameters, and for nadamw and sgd_nesterov a
numpy implementation of the defining equations. Three steps on {"w": [4, 3], "b": [3]} with
gradients that depend on the params, so a dropped or mis-wired hyperparameter shows."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from jaxlab.configs import mnist5k_mlp
from jaxlab.data.pipeline import DataSpec
from jaxlab.errors import UserError
from jaxlab.optim import make_optimizer, zoo
from jaxlab.train import core
from jaxlab.train.init import build_model, dummy_input, make_tx, param_info_of
from jaxlab.optim.adam_atan2 import adam_atan2
from tests.optim.optim_configs import optim_config

LR = 0.1
PARAMS = {"w": np.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": np.array([0.5, -0.25, 1.0])}
_rng = np.random.default_rng(0)
NOISE = [{k: _rng.normal(size=v.shape) for k, v in PARAMS.items()} for _ in range(3)]


class NumpyTx(NamedTuple):
  """init/update over numpy float64 arrays (run() feeds it float64, not jax float32)."""
  init: Callable
  update: Callable


def nadamw_numpy(lr, b1, b2, eps, weight_decay):
  """AlgoPerf NAdamW: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
  p -= lr ((b1 m + (1-b1) g) / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd p)."""
  def init(p):
    zeros = lambda: {k: np.zeros_like(v) for k, v in p.items()}
    return 0, zeros(), zeros()

  def update(g, state, p):
    t, m, v = state
    t += 1
    out = {}
    for k in g:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      m_hat = (b1 * m[k] + (1 - b1) * g[k]) / (1 - b1 ** t)
      out[k] = -lr * (m_hat / (np.sqrt(v[k] / (1 - b2 ** t)) + eps) + weight_decay * p[k])
    return out, (t, m, v)
  return NumpyTx(init, update)


def sgd_nesterov_numpy(lr, momentum, weight_decay):
  """optax's Nesterov form: v = mu v + g; p -= lr (g + mu v) + lr wd p (decay outside v)."""
  def init(p):
    return {k: np.zeros_like(v) for k, v in p.items()}

  def update(g, v, p):
    v = {k: momentum * v[k] + g[k] for k in g}
    return {k: -lr * (g[k] + momentum * v[k]) - lr * weight_decay * p[k] for k in g}, v
  return NumpyTx(init, update)


def sgd_nesterov_optax(lr, momentum, weight_decay):
  """optax.sgd(nesterov=True) plus -lr * wd * p added to its update."""
  sgd = optax.sgd(lr, momentum=momentum, nesterov=True)

  def update(g, state, p):
    u, state = sgd.update(g, state, p)
    return jax.tree.map(lambda u, p: u - lr * weight_decay * p, u, p), state
  return optax.GradientTransformation(sgd.init, update)


# name -> (non-default value of every hyperparameter in `defaults`, references (lr, hparams) -> tx)
CASES = {
    "adamw": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.1},
              [lambda lr, h: optax.adamw(lr, **h)]),
    "nadamw": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.1},
               [lambda lr, h: nadamw_numpy(lr, **h)]),
    "sgd_nesterov": ({"momentum": 0.8, "weight_decay": 0.1},
                     [lambda lr, h: sgd_nesterov_optax(lr, **h),
                      lambda lr, h: sgd_nesterov_numpy(lr, **h)]),
    "lamb": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.1},
             [lambda lr, h: optax.lamb(lr, **h)]),
    "lars": ({"momentum": 0.8, "weight_decay": 0.1, "trust_coefficient": 0.01, "eps": 1e-3,
              "nesterov": True}, [lambda lr, h: optax.lars(lr, **h)]),
    "lion": ({"b1": 0.8, "b2": 0.95, "weight_decay": 0.1}, [lambda lr, h: optax.lion(lr, **h)]),
    "adafactor": ({"decay_rate": 0.7, "clipping_threshold": 0.5, "weight_decay": 0.1,
                   "min_dim_size_to_factor": 2, "multiply_by_parameter_scale": False},
                  [lambda lr, h: optax.adafactor(
                      lr, decay_rate=0.7, clipping_threshold=0.5, weight_decay_rate=0.1,
                      min_dim_size_to_factor=2, multiply_by_parameter_scale=False)]),
    "muon": ({"beta": 0.9, "ns_steps": 3, "weight_decay": 0.1, "nesterov": False, "adam_b1": 0.8,
              "adam_b2": 0.99, "adam_weight_decay": 0.05}, [lambda lr, h: contrib.muon(lr, **h)]),
    "schedule_free_adamw": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.1,
                             "weight_lr_power": 1.0},
                            [lambda lr, h: contrib.schedule_free_adamw(lr, **h)]),
    "adam_atan2": ({"b1": 0.8, "b2": 0.99, "a": 1.0, "b": 2.0, "weight_decay": 0.1},
                   [lambda lr, h: adam_atan2(lr, **h)]),
}


# schedule-free weighs its average by max_lr^weight_lr_power: only a varying LR shows that power
LR_OF = {"schedule_free_adamw": optax.linear_schedule(0.02, LR, 3)}


def run(tx):
  """Three steps with grads g_t + 0.5 p; the list of updates (float64 numpy)."""
  xp, dtype = (np, np.float64) if isinstance(tx, NumpyTx) else (jnp, jnp.float32)
  cast = lambda t: {k: xp.asarray(v, dtype) for k, v in t.items()}
  params = cast(PARAMS)
  state, out = tx.init(params), []
  for noise in NOISE:
    grads = cast({k: noise[k] + 0.5 * np.asarray(params[k]) for k in params})
    updates, state = tx.update(grads, state, params)
    params = cast({k: np.asarray(params[k]) + np.asarray(updates[k]) for k in params})
    out.append({k: np.asarray(v, np.float64) for k, v in updates.items()})
  return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_entry_matches_reference(name):
  hparams, refs = CASES[name]
  algo = zoo.get(name)
  assert set(hparams) == set(algo.defaults)
  assert all(hparams[k] != algo.defaults[k] for k in hparams), "test every hyperparameter"
  lr = LR_OF.get(name, LR)
  got = run(algo.make(lr, **hparams))
  for ref in refs:
    want = run(ref(lr, hparams))
    for g, w in zip(got, want):
      for k in g:
        np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-6 * np.abs(w[k]).max())
  assert np.abs(got[-1]["w"]).max() > 0


def test_optax_nadamw_is_another_variant():
  """optax.nadamw corrects the momentum term's bias differently (see zoo.scale_by_nadam), which
  is why the zoo does not wrap it: the first step already differs."""
  h = CASES["nadamw"][0]
  ours = run(zoo.get("nadamw").make(LR, **h))
  theirs = run(optax.nadamw(LR, **h))
  assert np.abs(ours[0]["w"] - theirs[0]["w"]).max() > 1e-3


def test_eval_params_of_schedule_free_behind_clipping():
  tx = optax.chain(optax.clip_by_global_norm(1.0), zoo.get("schedule_free_adamw").make(LR))
  params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
  state = tx.init(params)
  for noise in NOISE:
    updates, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in noise.items()},
                               state, params)
    params = optax.apply_updates(params, updates)
  got = zoo.eval_params("schedule_free_adamw", params, state)
  want = contrib.schedule_free_eval_params(state[1], params)
  for k in params:
    np.testing.assert_array_equal(got[k], want[k])
  assert np.abs(np.asarray(got["w"] - params["w"])).max() > 1e-4
  assert zoo.eval_params("adamw", params, state) is params


def test_unknown_name_raises_user_error_listing_names():
  with pytest.raises(UserError, match="'adamx'.*valid: .*nadamw.*muon.*soap"):
    zoo.get("adamx")


@pytest.mark.parametrize("name", sorted(zoo.OPTIMIZERS))
def test_search_space_is_well_formed(name):
  algo = zoo.get(name)
  assert "learning_rate" in algo.search_space and algo.source
  for key, (low, high, scale) in algo.search_space.items():
    assert key == "learning_rate" or key in algo.defaults, key
    assert low < high and scale in ("log", "linear"), key
    assert scale == "linear" or low > 0, key


def optim_cfg(**kw):
  return optim_config(**{"name": "lamb", "learning_rate": 0.1, "schedule": "constant",
                         "warmup_steps": 0, "min_lr_ratio": 0.0, "weight_decay": 0.1, "b1": 0.8,
                         "b2": 0.99, "eps": 1e-3, "momentum": 0.9, **kw})


def test_make_optimizer_builds_a_zoo_optimizer_from_the_config():
  """lamb with the config's b1, b2, eps, weight_decay, as optax.lamb with those."""
  got = run(make_optimizer(optim_cfg(), num_steps=10))
  want = run(optax.lamb(0.1, b1=0.8, b2=0.99, eps=1e-3, weight_decay=0.1))
  for g, w in zip(got, want):
    for k in g:
      np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-7)
  with pytest.raises(UserError, match="config.optim.name='adamx'.*sgd_nesterov"):
    make_optimizer(optim_cfg(name="adamx"), 10)
  with pytest.raises(UserError, match="per-parameter weight-decay factors"):
    make_optimizer(optim_cfg(), 10, decay={"w": 2.0, "b": 1.0})


def test_make_tx_takes_a_zoo_optimizer_without_an_lr_rule_only_under_sp():
  c = mnist5k_mlp.get_config()
  c.model.hidden_widths = (32, 32)
  c.optim.name = "lamb"
  spec = DataSpec(task="classification", input_shape=(28, 28, 1), num_classes=10)
  example = dummy_input(spec)

  def tx_for(param_name):
    c.param.update(name=param_name, base_width=16 if param_name == "mup" else 0)
    model = build_model(c, spec)
    return make_tx(c, model, param_info_of(model, example)), model

  tx, model = tx_for("sp")
  params = core.init_params_and_extra(model, jax.random.PRNGKey(0), example)[0]
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
  with pytest.raises(UserError, match="'lamb' has no per-parameter learning-rate rule.*'sp'"):
    tx_for("mup")


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_preconditioned_entries_pass_their_hyperparameters_through(name):
  import importlib  # pylint: disable=g-import-not-at-top
  direct = getattr(importlib.import_module(f"jaxlab.optim.{name}"), name)
  hp = {"b1": 0.8, "b2": 0.9, "block_size": 2, "precondition_every": 2, "weight_decay": 0.1}
  params = {"w": jnp.arange(1.0, 25.0).reshape(6, 4) / 10, "b": jnp.ones(4)}
  outs = []
  for tx in (zoo.get(name).make(1e-2, **hp), direct(1e-2, **hp)):
    p, state = params, tx.init(params)
    for t in range(4):
      g = jax.tree.map(lambda x, t=t: jnp.sin(x * (t + 1)), p)
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    outs.append(p)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), *outs)
  default = zoo.get(name).make(1e-2)  # a different block size / interval gives other params
  p, state = params, default.init(params)
  for t in range(4):
    g = jax.tree.map(lambda x, t=t: jnp.sin(x * (t + 1)), p)
    u, state = default.update(g, state, p)
    p = optax.apply_updates(p, u)
  assert not np.allclose(np.asarray(p["w"]), np.asarray(outs[0]["w"]))
