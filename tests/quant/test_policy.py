"""QuantConfig, the quantized dot_general / conv (exact against integer ops, quantized
cotangents), and the named policies that layers obey."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models, param, quant
from jaxlab.errors import UserError
from jaxlab.models import layers
from jaxlab.param import roles
from jaxlab.quant import (BinaryFormat, FP8Format, IntFormat, LSQFormat, QuantConfig,
                          QuantPolicy, TernaryFormat)
from jaxlab.quant.config import quantized_conv_general_dilated, quantized_dot_general
from jaxlab.models.context import LayerContext
from tests.quant.test_fp8 import NP_DTYPES
from tests.quant.test_quantizers import np_int_fake_quant

KEY = jax.random.key(0, impl="rbg")
RNG = np.random.default_rng(0)
DN = (((1,), (0,)), ((), ()))  # x [M, K] @ w [K, N]
INT8 = QuantConfig(weight=IntFormat(8, granularity="per_channel"),
                   activation=IntFormat(8, granularity="per_token"))


def pow2_rows(shape, axis, exponents, qmax=127):
  """Random values whose max|.| along `axis` is qmax * 2^e (one e per slice), so the symmetric
  max-abs scale of each slice is exactly 2^e."""
  x = RNG.uniform(-1, 1, shape) * qmax
  x = np.moveaxis(x, axis, -1)
  x[..., 0] = qmax * np.sign(RNG.standard_normal(x.shape[:-1]) + 1e-9)
  x = x * np.exp2(np.asarray(exponents)).reshape(x.shape[:-1] + (1,))
  return np.moveaxis(x, -1, axis).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# QuantConfig


@pytest.mark.parametrize("make,match", [
    (lambda: IntFormat(bits=9), "bits"),
    (lambda: IntFormat(granularity="per_row"), "granularity 'per_row'.*per_tensor"),
    (lambda: IntFormat(rounding="up"), "rounding 'up'.*nearest, stochastic"),
    (lambda: BinaryFormat(ste="tanh"), "ste 'tanh'.*identity, clipped"),
    (lambda: TernaryFormat(threshold=-1.0), "threshold"),
    (lambda: FP8Format(dtype="e4m4"), "fp8 format 'e4m4'.*e4m3, e5m2"),
    (lambda: FP8Format(scaling="lazy"), "fp8 scaling 'lazy'.*current, delayed"),
    (lambda: LSQFormat(bits=1), "bits"),
    (lambda: QuantConfig(gradient=BinaryFormat()), "gradient format.*IntFormat, FP8Format"),
    (lambda: QuantConfig(weight="int8"), "weight format"),
    (lambda: QuantConfig(gradient=IntFormat(granularity="per_token")), "per_tensor"),
])
def test_config_errors_name_the_option(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_configs_are_hashable():  # policies live in Flax module fields
  assert hash(INT8) == hash(QuantConfig(weight=IntFormat(8, granularity="per_channel"),
                                        activation=IntFormat(8, granularity="per_token")))
  assert len({quant.get(n) for n in quant.names()}) == len(quant.names()) - 1  # fp32 is none


# ---------------------------------------------------------------------------------------------
# Quantized dot_general / conv


@pytest.mark.parametrize("lhs_shape", [(4, 16), (2, 3, 24), (1, 8)])
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("jit", [False, True])
def test_int8_dot_general_equals_integer_matmul(lhs_shape, n, jit):
  """Power-of-two scales: fake-quant matmul == int8 x int8 -> int32 matmul times the scales."""
  k = lhs_shape[-1]
  ex = RNG.integers(-6, 3, lhs_shape[:-1])
  ew = RNG.integers(-9, -2, (n,))
  x = pow2_rows(lhs_shape, -1, ex)
  w = pow2_rows((k, n), 0, ew)
  dn = (((len(lhs_shape) - 1,), (0,)), ((), ()))
  f = quantized_dot_general(INT8)
  f = jax.jit(f, static_argnums=2) if jit else f
  y = np.asarray(f(jnp.asarray(x), jnp.asarray(w), dn))
  sx, sw = np.exp2(ex)[..., None], np.exp2(ew)
  qx = np.clip(np.round(x / sx), -127, 127).astype(np.int8)
  qw = np.clip(np.round(w / sw), -127, 127).astype(np.int8)
  acc = jax.lax.dot_general(jnp.asarray(qx), jnp.asarray(qw), dn,
                            preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(y, np.asarray(acc).astype(np.float32) * sx * sw)
  assert not np.array_equal(y, x @ w)  # really quantized


def test_int8_conv_equals_integer_conv():
  """Per-tensor activations, per-output-channel kernel, power-of-two scales: exact."""
  conv = quantized_conv_general_dilated(QuantConfig(weight=IntFormat(8, granularity="per_channel"),
                                                    activation=IntFormat(8)))
  x = pow2_rows((1, 30), -1, [-3]).reshape(1, 5, 6, 1) * np.ones((1, 1, 1, 2), np.float32)
  x[..., 1] *= RNG.uniform(-1, 1, x.shape[:-1])
  w = pow2_rows((3 * 3 * 2, 4), 0, [-7, -6, -5, -8]).reshape(3, 3, 2, 4)
  kw = dict(window_strides=(1, 2), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.asarray(conv(jnp.asarray(x), jnp.asarray(w), **kw))
  qx = np.clip(np.round(x / 2.0 ** -3), -127, 127).astype(np.int8)
  sw = np.exp2([-7, -6, -5, -8])
  qw = np.clip(np.round(w / sw), -127, 127).astype(np.int8)
  acc = jax.lax.conv_general_dilated(jnp.asarray(qx), jnp.asarray(qw), **kw,
                                     preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(y, np.asarray(acc).astype(np.float32) * 2.0 ** -3 * sw)


def test_plain_op_when_config_is_empty():
  x = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
  w = jnp.asarray(RNG.standard_normal((4, 2)), jnp.float32)
  np.testing.assert_array_equal(quantized_dot_general(QuantConfig())(x, w, DN),
                                jax.lax.dot_general(x, w, DN))


@pytest.mark.parametrize("ste", ["identity", "clipped"])
def test_operand_gradients_are_the_ste(ste):
  """No gradient format: dx = g W_q^T and dW = x_q^T g, passed through the operands' STE."""
  cfg = QuantConfig(weight=IntFormat(4, granularity="per_channel", ste=ste),
                    activation=IntFormat(4, symmetric=False, granularity="per_token", ste=ste))
  x = RNG.standard_normal((5, 6)).astype(np.float32)
  w = RNG.standard_normal((6, 3)).astype(np.float32)
  c = RNG.standard_normal((5, 3)).astype(np.float32)
  f = quantized_dot_general(cfg)
  dx, dw = jax.grad(lambda x, w: jnp.sum(c * f(x, w, DN)), argnums=(0, 1))(x, w)
  qx, *_ = np_int_fake_quant(x, 4, False, (1,))
  qw, *_ = np_int_fake_quant(w, 4, True, (0,))
  # max-abs / min-max scales clip nothing, so the clipped STE equals the identity here
  np.testing.assert_allclose(dx, c @ qw.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, qx.T @ c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_fmt", ["int8", "e5m2"])
def test_cotangent_quantized_before_backward_matmuls(grad_fmt):
  gradient = IntFormat(8) if grad_fmt == "int8" else FP8Format("e5m2")
  cfg = QuantConfig(weight=IntFormat(8, granularity="per_channel"), gradient=gradient)
  x = RNG.standard_normal((4, 8)).astype(np.float32)
  w = RNG.standard_normal((8, 3)).astype(np.float32)
  c = (RNG.standard_normal((4, 3)) * np.exp2(RNG.integers(-6, 6, (4, 3)))).astype(np.float32)
  f = quantized_dot_general(cfg)
  y, vjp = jax.vjp(lambda x, w: f(x, w, DN), x, w)
  dx, dw = vjp(jnp.asarray(c))
  qw, *_ = np_int_fake_quant(w, 8, True, (0,))
  np.testing.assert_allclose(y, x @ qw, rtol=1e-5, atol=1e-6)  # forward: weights only
  if grad_fmt == "int8":
    qc, *_ = np_int_fake_quant(c, 8, True, (0, 1))
  else:
    s = np.float32(np.abs(c).max() / 57344)
    qc = (c / s).astype(NP_DTYPES["e5m2"]).astype(np.float32) * s
  assert not np.allclose(qc, c, rtol=1e-3)
  np.testing.assert_allclose(dx, qc @ qw.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, x.T @ qc, rtol=1e-5, atol=1e-6)


def test_stochastic_gradient_rounding_needs_rng():
  cfg = QuantConfig(gradient=IntFormat(4, rounding="stochastic"))
  f = quantized_dot_general(cfg)
  # Own generator: the module-level RNG's state depends on which tests ran before in the worker.
  rng = np.random.default_rng(7)

  def grad_fn(x, w):
    return jax.jit(lambda k: jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w, DN, rng=k))))(x))

  # Different keys round differently: with a large cotangent ([64, 8], 512 entries) two keys
  # cannot round every entry alike by chance, which a [3, 2] one (6 entries, its amax exactly on
  # the grid) sometimes did.
  xl = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  wl = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  with pytest.raises(ValueError, match="rng"):
    f(xl, wl, DN)
  k1, k2 = jax.random.split(KEY)
  grad = grad_fn(xl, wl)
  np.testing.assert_array_equal(grad(k1), grad(k1))
  assert not np.array_equal(grad(k1), grad(k2))
  # unbiased: the mean over keys approaches the float gradient
  x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)
  grad = grad_fn(x, w)
  exact = jax.grad(lambda x: jnp.sum(jnp.sin(x @ w)))(x)
  mean = jnp.mean(jax.vmap(grad)(jax.random.split(KEY, 500)), axis=0)
  np.testing.assert_allclose(mean, exact, atol=0.02)


def test_lsq_steps_are_quant_state():
  cfg = QuantConfig(weight=LSQFormat(4), activation=LSQFormat(8))
  f = quantized_dot_general(cfg)
  x = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
  w = jnp.asarray(RNG.standard_normal((4, 2)), jnp.float32)
  with pytest.raises(ValueError, match="LSQFormat needs its learned step"):
    f(x, w, DN)
  sx, sw = jnp.float32(0.02), jnp.float32(0.3)
  y = f(x, w, DN, quant_state={"activation": sx, "weight": sw})
  ref = (np.round(np.clip(x / sx, -128, 127)) * sx) @ (np.round(np.clip(w / sw, -8, 7)) * sw)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda s: jnp.sum(f(x, w, DN, quant_state={"activation": sx, "weight": s}) ** 2))(sw)
  assert np.isfinite(g) and g != 0


def test_delayed_fp8_not_supported_inside_the_op():
  f = quantized_dot_general(QuantConfig(weight=FP8Format(scaling="delayed")))
  with pytest.raises(ValueError, match="delayed.*init_history"):
    f(jnp.ones((2, 3)), jnp.ones((3, 2)), DN)


def test_weight_operand_lhs():
  """Feature-major W^T x: with weight_operand='lhs' the kernel (lhs) gets the weight format."""
  cfg = QuantConfig(weight=IntFormat(4, granularity="per_channel"))
  w = RNG.standard_normal((6, 3)).astype(np.float32)  # [fan_in, features]
  xt = RNG.standard_normal((6, 5)).astype(np.float32)  # [fan_in, tokens]
  dn = (((0,), (0,)), ((), ()))
  y = quantized_dot_general(cfg, weight_operand="lhs")(jnp.asarray(w), jnp.asarray(xt), dn)
  qw, *_ = np_int_fake_quant(w, 4, True, (0,))
  np.testing.assert_allclose(y, qw.T @ xt, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="weight_operand 'x'.*lhs, rhs"):
    quantized_dot_general(cfg, weight_operand="x")


# ---------------------------------------------------------------------------------------------
# Policies


def test_registry():
  assert set(quant.names()) == {"fp32", "none", "int8", "int4_w", "w4a8", "binary_w", "fp8",
                                "fp8_delayed", "lsq_w4a8"}
  with pytest.raises(UserError, match="'int9'.*binary_w, fp32, fp8, fp8_delayed, int4_w, int8, "
                                       "lsq_w4a8, none, w4a8"):
    quant.get("int9")


@pytest.mark.parametrize("name", ["fp32", "none"])
def test_no_quant_policies_return_plain_ops(name):
  p = quant.get(name)
  for path in ("", "dense_1", "block_0/attn/qkv", "readout", "stem"):
    assert p.dot_general(path) is jax.lax.dot_general
    assert p.conv_general_dilated(path) is jax.lax.conv_general_dilated


FIRST_AND_READOUT = ("dense_0", "stem", "patch_embed", "embed", "readout")
INNER = ("dense_1", "dense_10", "block_0/attn/qkv", "block_3/mlp/down", "stage_0_block_1/conv_0",
         "block_2/attn/out", "")


@pytest.mark.parametrize("name", ["int8", "int4_w", "w4a8", "binary_w"])
def test_integer_policies_keep_first_and_readout_in_float(name):
  """Input- and readout-role weights stay float wherever they sit; hidden ones are quantized."""
  p = quant.get(name)
  for path in FIRST_AND_READOUT + INNER:
    for role in (roles.INPUT, roles.READOUT):
      assert p.dot_general(path, role) is jax.lax.dot_general, path
      assert p.conv_general_dilated(path, role) is jax.lax.conv_general_dilated, path
    assert p.dot_general(path, roles.HIDDEN) is not jax.lax.dot_general, path
    assert p.conv_general_dilated(path, roles.HIDDEN) is not jax.lax.conv_general_dilated, path
    assert p.config_for(path, roles.HIDDEN) is not None


# The module-path rule the role rule replaced, on the models' own layer names.
PATH_RULE = r"dense_0|stem|patch_embed|embed|readout"
TOKENS = np.zeros((1, 8), np.int32)
IMAGE = np.zeros((1, 8, 8, 1), np.float32)


@pytest.mark.parametrize("cfg,x", [
    (dict(name="mlp", hidden_widths=(8, 8), num_classes=3), IMAGE),
    (dict(name="resnet", width=4, blocks_per_stage=1), IMAGE),
    (dict(name="vit", dim=8, depth=1, num_heads=2), IMAGE),
    (dict(name="convnext", widths=(4, 8), depths=(1, 1), kernel_size=3), IMAGE),
    (dict(name="transformer", d_model=8, num_layers=1, num_heads=2, max_len=8), TOKENS),
    (dict(name="transformer", d_model=8, num_layers=1, num_heads=2, max_len=8,
          tie_embeddings=True, positional="learned"), TOKENS),
    (dict(name="longconv", d_model=8, num_layers=1, max_len=8, kernel_dim=4), TOKENS)])
def test_role_rule_keeps_the_same_layers_float_as_the_path_rule(cfg, x):
  asked = {}

  class Spy(QuantPolicy):
    def config_for(self, module_path, role=None):
      config = super().config_for(module_path, role)
      asked[module_path] = config is None
      return config

  int8 = quant.get("int8")
  spy = Spy(rules=int8.rules, name="spy", keep_float_roles=int8.keep_float_roles)
  jax.eval_shape(models.build(cfg, quant=spy).init, KEY, x)
  assert asked and asked == {path: bool(re.fullmatch(PATH_RULE, path)) for path in asked}


def test_fp8_policy_everywhere():
  p = quant.get("fp8")
  for path in FIRST_AND_READOUT + INNER:
    cfg = p.config_for(path)
    assert cfg.weight.dtype == cfg.activation.dtype == "e4m3" and cfg.gradient.dtype == "e5m2"
    assert p.dot_general(path) is not jax.lax.dot_general


def test_policy_formats():
  int8, w4a8 = quant.get("int8").config_for("dense_1"), quant.get("w4a8").config_for("dense_1")
  assert (int8.weight.bits, int8.weight.granularity, int8.weight.symmetric) == (
      8, "per_channel", True)
  assert (int8.activation.bits, int8.activation.granularity) == (8, "per_token")
  assert quant.get("int4_w").config_for("x").activation is None
  assert (w4a8.weight.bits, w4a8.activation.bits) == (4, 8)
  binary = quant.get("binary_w").config_for("x")
  assert binary.weight.scaled and binary.activation is None


def test_policy_rule_order_and_errors():
  cfg = QuantConfig(weight=IntFormat(4))
  p = QuantPolicy(rules=((r"block_\d+/attn/.*", None), (r"block_\d+/.*", cfg)), name="mine")
  assert p.config_for("block_0/attn/qkv") is None and p.config_for("block_1/mlp/up") is cfg
  assert p.config_for("block_1") is None  # fullmatch
  with pytest.raises(ValueError, match="bad module-path regex"):
    QuantPolicy(rules=(("block_(", cfg),))
  with pytest.raises(ValueError, match="QuantConfig or None"):
    QuantPolicy(rules=((".*", "int8"),))


def test_dense_under_int8_equals_manual_fake_quant():
  x = RNG.standard_normal((2, 3, 6)).astype(np.float32)
  m = layers.Dense(5, ctx=LayerContext(quant=quant.get("int8")))
  p = param.unbox(jax.jit(m.init)(KEY, x))["params"]
  kernel, bias = np.asarray(p["kernel"]), np.asarray(p["bias"]) + 0.1
  y = m.apply({"params": {"kernel": kernel, "bias": bias}}, x)
  qx, *_ = np_int_fake_quant(x, 8, True, (2,))  # one scale per token
  qw, *_ = np_int_fake_quant(kernel, 8, True, (0,))  # one scale per output channel
  np.testing.assert_allclose(y, qx @ qw + bias, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(y) - (x @ kernel + bias)).max() > 1e-5


def test_mlp_under_int8_first_and_readout_float():
  x = RNG.standard_normal((4, 6)).astype(np.float32)
  model = models.MLP(hidden_widths=(8, 7), num_classes=3, ctx=LayerContext(quant=quant.get("int8")))
  p = param.unbox(jax.jit(model.init)(KEY, x))["params"]
  y = np.asarray(jax.jit(model.apply)({"params": p}, x))
  W = {k: (np.asarray(v["kernel"]), np.asarray(v["bias"])) for k, v in p.items()}
  h = np.maximum(x @ W["dense_0"][0] + W["dense_0"][1], 0)
  qh, *_ = np_int_fake_quant(h, 8, True, (1,))
  qw, *_ = np_int_fake_quant(W["dense_1"][0], 8, True, (0,))
  h = np.maximum(qh @ qw + W["dense_1"][1], 0)
  np.testing.assert_allclose(y, h @ W["readout"][0] + W["readout"][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["int8", "int4_w", "w4a8", "binary_w", "fp8"])
def test_named_policies_train_a_tiny_mlp_and_conv(name):
  x = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
  mlp, conv = (models.MLP(hidden_widths=(8, 8), num_classes=3), layers.Conv(3, 2))
  v_mlp, v_conv = jax.jit(mlp.init)(KEY, x), jax.jit(conv.init)(KEY, x)

  @jax.jit
  def run(v_mlp, v_conv):
    out = {}
    for key, m, v in (("mlp", mlp, v_mlp), ("conv", conv, v_conv)):
      q = m.clone(ctx=LayerContext(quant=quant.get(name)))
      out[key] = (q.apply(v, x), m.apply(v, x),
                  jax.grad(lambda v: jnp.sum(jnp.sin(q.apply(v, x))))(v))
    return out

  for key, (y, plain, grads) in run(v_mlp, v_conv).items():
    grads = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in grads), key
    assert all(np.any(g != 0) for g in grads), key
    assert not np.allclose(y, plain, rtol=1e-6), key  # mlp: dense_1 is quantized


def test_feature_major_dense_quantizes_its_kernel():
  x = RNG.standard_normal((6, 4)).astype(np.float32)  # [fan_in, tokens]
  m = layers.Dense(3, feature_major=True, use_bias=False,
                   ctx=LayerContext(quant=quant.get("int4_w")))
  p = param.unbox(m.init(KEY, x))["params"]
  qw, *_ = np_int_fake_quant(np.asarray(p["kernel"]), 4, True, (0,))
  np.testing.assert_allclose(m.apply({"params": p}, x), qw.T @ x, rtol=1e-5, atol=1e-6)
