"""u-muP (Blake et al. 2024): unit RMS (1 +- 0.1) of every layer's output and gradients at init,
for unit-RMS inputs and output cotangents (unit-scaling's test habit), and its scale tables."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, optim, param
from jaxlab.errors import UserError
from jaxlab.models import attention, layers, norms
from jaxlab.param import roles
from jaxlab.param.unit_scaling import gaussian_rms, scale_bwd, scale_fwd, scaled_op
from jaxlab.train import tasks
from jaxlab.models.context import LayerContext

TOL = 0.1


def rms(x):
  return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def unit_stats(module, x, seed=0, **kwargs):
  """(output RMS, input-gradient RMS, {param path: gradient RMS}) of `module` at init, for the
  input x and a unit-normal output cotangent."""
  p = param.unbox(module.init(jax.random.PRNGKey(seed), x, **kwargs)["params"])
  y, vjp = jax.vjp(lambda p_, x_: module.apply({"params": p_}, x_, **kwargs), p, x)
  gp, gx = vjp(jax.random.normal(jax.random.PRNGKey(seed + 1), y.shape, y.dtype))
  flat = jax.tree_util.tree_flatten_with_path(gp)[0]
  grads = {"/".join(str(k.key) for k in path): rms(g) for path, g in flat}
  return rms(y), (rms(gx) if jnp.issubdtype(x.dtype, jnp.floating) else None), grads


def assert_unit(value, what):
  assert abs(value - 1.0) <= TOL, f"{what}: RMS {value:.3f} not within 1 +- {TOL}"


UMUP = param.get("umup").resolve(256, 4)
UMUP_CTX = LayerContext(parametrization=UMUP)
X = jax.random.normal(jax.random.PRNGKey(7), (8, 64, 256))


def test_scale_fwd_and_scale_bwd_against_closed_forms():
  x = jnp.arange(1.0, 4.0)
  y, vjp = jax.vjp(lambda t: scale_fwd(t, 3.0), x)
  np.testing.assert_array_equal(y, 3.0 * x)
  np.testing.assert_array_equal(vjp(jnp.ones(3))[0], jnp.ones(3))
  y, vjp = jax.vjp(lambda t: scale_bwd(t, 3.0), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(jnp.ones(3))[0], 3.0 * jnp.ones(3))
  # scaled_op: forward out * (x @ w); cotangents grad_in * g w^T and grad_param * x^T g
  a, w, g = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in
             enumerate([(5, 3), (3, 4), (5, 4)]))
  y, vjp = jax.vjp(lambda a_, w_: scaled_op(a_, w_, jnp.matmul, 0.5, 2.0, 3.0), a, w)
  ga, gw = vjp(g)
  _assert_matmul_close(y, 0.5, a, w)
  _assert_matmul_close(ga, 2.0, g, w.T)
  _assert_matmul_close(gw, 3.0, a.T, g)


def _assert_matmul_close(got, c, x, y):
  """got == c * (x @ y) up to float32 summation order: |error| <= k eps sum_i |c x_i y_i| for k
  terms (the classic bound; an entry can cancel to far below its terms, so a relative tolerance
  alone would depend on the CPU's reduction order). A wrong scale or transpose is off by O(1)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  want = c * (x @ y)
  bound = x.shape[-1] * np.finfo(np.float32).eps * abs(c) * (np.abs(x) @ np.abs(y))
  err = np.abs(np.asarray(got, np.float64) - want)
  assert np.all(err <= bound), f"max error {err.max():.3g} above its bound {bound.min():.3g}"


def test_gaussian_rms_matches_closed_forms():
  relu = layers.activation("relu")
  assert gaussian_rms(relu) == pytest.approx(math.sqrt(0.5), rel=1e-4)  # E[relu(z)^2] = 1/2
  assert gaussian_rms(relu, derivative=True) == pytest.approx(math.sqrt(0.5), rel=1e-3)
  assert gaussian_rms(layers.activation("identity")) == pytest.approx(1.0, rel=1e-5)
  # E[tanh(z)^2] by Monte Carlo as an independent check
  z = np.random.default_rng(0).standard_normal(2_000_000)
  assert gaussian_rms(layers.activation("tanh")) == pytest.approx(
      math.sqrt(np.mean(np.tanh(z) ** 2)), rel=2e-3)


@pytest.mark.parametrize("fan_out", [256, 1024])
def test_hidden_dense_is_unit_scaled(fan_out):
  y, gx, gw = unit_stats(layers.Dense(fan_out, ctx=UMUP_CTX), X)
  assert_unit(y, "output")
  assert_unit(gw["kernel"], "kernel gradient")
  assert_unit(gw["bias"], "bias gradient")
  # 'to_output_scale' constraint: the true gradient, RMS sqrt(fan_out / fan_in)
  assert gx == pytest.approx(math.sqrt(fan_out / 256), rel=TOL)


def test_readout_has_unit_gradients_and_the_mup_output_scale():
  y, gx, gw = unit_stats(layers.Readout(256, use_bias=False, ctx=UMUP_CTX), X)
  assert_unit(gx, "input gradient")
  assert_unit(gw["kernel"], "kernel gradient")
  assert y == pytest.approx(1 / math.sqrt(256), rel=TOL)  # 1/fan_in forward: logits ~0 at init


def test_embedding_lookup_is_unit_scaled():
  ids = jax.random.randint(jax.random.PRNGKey(3), (8, 64), 0, 256)
  y, _, gw = unit_stats(layers.Embed(256, 256, ctx=UMUP_CTX), ids)
  assert_unit(y, "output")
  assert_unit(gw["embedding"], "table gradient")


@pytest.mark.parametrize("name", ["relu", "gelu_tanh", "silu"])
def test_activation_is_unit_scaled(name):
  f = lambda t: layers.apply_activation(name, t, UMUP)  # noqa: E731
  y, vjp = jax.vjp(f, X)
  assert_unit(rms(y), f"{name} output")
  assert_unit(rms(vjp(jax.random.normal(jax.random.PRNGKey(1), X.shape))[0]), f"{name} grad")


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm"])
def test_norm_is_unit_scaled(name):
  y, gx, gp = unit_stats(norms.norm_class(name)(ctx=UMUP_CTX), X)
  assert_unit(y, "output")
  assert_unit(gx, "input gradient")
  for path, g in gp.items():
    assert_unit(g, path)


def test_feed_forward_is_unit_scaled():
  y, gx, gp = unit_stats(layers.FeedForward(1024, activation="gelu_tanh", use_bias=False,
                                            ctx=UMUP_CTX), X)
  assert_unit(y, "output")
  assert_unit(gx, "input gradient")  # up (x2) and down (x1/2) cancel
  assert gp["up/kernel"] == pytest.approx(0.5, rel=TOL)  # its cotangent is down's grad_in (1/2)
  assert_unit(gp["down/kernel"], "down kernel gradient")


@pytest.mark.parametrize("causal", [True, False])
def test_attention_is_unit_scaled(causal):
  y, gx, gp = unit_stats(attention.Attention(4, causal=causal, use_bias=False,
                                          ctx=UMUP_CTX), X)
  assert_unit(y, "output")
  assert_unit(gx, "input gradient")
  assert_unit(gp["out/kernel"], "out kernel gradient")


def test_transformer_block_is_unit_scaled():
  block = models.transformer.Block(4, num_layers=4, layer=2, use_bias=False, ctx=UMUP_CTX)
  y, gx, _ = unit_stats(block, X)
  assert_unit(y, "output")
  assert_unit(gx, "input gradient")


def test_residual_taus_follow_depth_mup():
  """Branch k of an L-block stack: tau_k = 1/sqrt(L + k), so the unnormalised stream is
  embedding + sum_k f_k / sqrt(L) -- every branch weighted 1/sqrt(L) relative to the embedding."""
  p = param.get("umup").resolve(64, 8)
  variance = 1.0  # of the stream in units of the embedding's variance, before normalising
  for k in range(16):
    tau = p.residual_tau(k, 8)
    assert tau == pytest.approx(1 / math.sqrt(8 + k))
    assert tau**2 == pytest.approx((1 / 8) / variance)  # branch variance 1/L vs the stream's
    variance += 1 / 8


def test_umup_scale_table():
  p = param.get("umup").resolve(512, 4)
  fi, fo = 512, 2048
  assert p.init_std(roles.HIDDEN, fi, fo) == p.init_std(roles.READOUT, fi, 10) == 1.0
  assert p.init_std(roles.INPUT, 784, fi) == 1.0
  assert p.forward_multiplier(roles.HIDDEN, fi, fo) == pytest.approx(1 / math.sqrt(fi))
  assert p.forward_multiplier(roles.READOUT, fi, 10) == pytest.approx(1 / fi)
  assert p.attention_scale(64) == pytest.approx(1 / 64)
  hidden = param.ParamInfo(roles.HIDDEN, fi, fo, ("embed", "mlp"), True)
  assert p.lr_scale(hidden) == pytest.approx(1 / math.sqrt(fi) / math.sqrt(4))
  for role in (roles.READOUT, roles.BIAS, roles.NORM):
    assert p.lr_scale(param.ParamInfo(role, fi, fo, ("embed",))) == 1.0
    assert p.lr_scale(param.ParamInfo(role, fi, fo, ("embed",), True)) == pytest.approx(0.5)
    assert p.adam_eps_scale(param.ParamInfo(role, fi, fo)) == 1.0
  embedding = param.ParamInfo(roles.INPUT, 256, fi, ("vocab", "embed"))
  assert p.lr_scale(embedding) == 1.0
  assert param.get("umup", embedding_lr="unit_scaling").resolve(512, 4).lr_scale(
      embedding) == pytest.approx(1 / math.sqrt(fi))
  assert p.lr_scale(param.ParamInfo(roles.INPUT, 784, fi, ("input", "mlp"))) == pytest.approx(
      1 / 28)
  with pytest.raises(UserError, match="Adam-family"):
    p.lr_scale(hidden, "sgd")


def test_umup_lm_trains():
  """A u-muP LM built through the registry learns a fixed batch under Adam (LR 2^-4)."""
  p = param.get("umup")
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 33), 0, 16)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  lm = models.TransformerLM(vocab_size=16, d_model=64, num_layers=2, num_heads=2,
                            ctx=LayerContext(parametrization=p.resolve(64, 2)))
  boxed = lm.init(jax.random.PRNGKey(0), batch["inputs"])["params"]
  params = param.unbox(boxed)
  tx = optax.chain(optax.adam(2.0**-4),
                   optim.scale_by_parametrization(lm.ctx.parametrization, param.param_info(boxed)))

  def loss_fn(q):
    return tasks.LM.loss(lm.apply({"params": q}, batch["inputs"]), batch)

  state, losses = tx.init(params), []
  for _ in range(30):
    loss, g = jax.value_and_grad(loss_fn)(params)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
