"""Init schemes: LIR stds per block, mimetic attention products, scaled weight standardization,
ReZero at init, Fixup's zero/rescaled init, and config errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.depth import init_schemes
from jaxlab.errors import UserError
from jaxlab.param import roles
from tests.models.fitting import KEY, fit

BLOCK_KEYS = tuple(f.name for f in dataclasses.fields(models.BlockOptions))

TOKENS = np.random.default_rng(0).integers(0, 16, (2, 9))
IMAGES = np.random.default_rng(1).standard_normal((8, 8, 8, 1)).astype(np.float32)
LABELS = np.random.default_rng(2).integers(0, 4, 8)


def _init(model, x):
  return param.unbox(jax.jit(model.init)(KEY, x)["params"])


def _lm(**kw):
  """A TransformerLM; BlockOptions' keys go into block_options (as in models.build)."""
  options = models.BlockOptions(**{k: kw.pop(k) for k in BLOCK_KEYS if k in kw})
  return models.TransformerLM(**(dict(vocab_size=16, max_len=8, num_heads=2) | kw),
                              block_options=options)


def test_lir_init_std_per_block():
  """Block l's kernels have std sigma / sqrt(l), sigma = 1/sqrt(fan_in) (SP); the draws are
  the default ones rescaled."""
  d, layers = 128, 4
  lir = _init(_lm(d_model=d, num_layers=layers, init_scheme="lir"), TOKENS[:, :-1])
  default = _init(_lm(d_model=d, num_layers=layers), TOKENS[:, :-1])
  for i in range(layers):
    for path, fan_in in ((("attn", "qkv"), d), (("attn", "out"), d), (("mlp", "up"), d),
                         (("mlp", "down"), 4 * d)):
      w = np.asarray(lir[f"block_{i}"][path[0]][path[1]]["kernel"])
      target = 1 / math.sqrt(fan_in) / math.sqrt(i + 1)
      assert abs(w.std() / target - 1) < 0.03, (i, path, w.std(), target)
      w0 = default[f"block_{i}"][path[0]][path[1]]["kernel"]
      np.testing.assert_allclose(w, np.asarray(w0) / math.sqrt(i + 1), rtol=1e-6)
    np.testing.assert_array_equal(lir[f"block_{i}"]["attn_norm"]["scale"], 1.0)
  np.testing.assert_array_equal(lir["embed"]["embedding"], default["embed"]["embedding"])
  np.testing.assert_array_equal(lir["readout"]["kernel"], default["readout"]["kernel"])


def test_lir_resnet_branch_convs():
  x = IMAGES[:2]
  lir = _init(models.ResNet(width=4, blocks_per_stage=1, init_scheme="lir"), x)
  default = _init(models.ResNet(width=4, blocks_per_stage=1), x)
  for l, block in enumerate(("stage_0_block_0", "stage_1_block_0", "stage_2_block_0"), 1):
    for conv in ("conv_0", "conv_1"):
      np.testing.assert_allclose(lir[block][conv]["kernel"],
                                 np.asarray(default[block][conv]["kernel"]) / math.sqrt(l),
                                 rtol=1e-6)
  np.testing.assert_array_equal(lir["stage_1_block_0"]["proj"]["kernel"],
                                default["stage_1_block_0"]["proj"]["kernel"])


def _products(params, d, heads):
  attn = params["block_0"]["attn"]
  qkv, out = np.asarray(attn["qkv"]["kernel"]), np.asarray(attn["out"]["kernel"])
  dh = d // heads
  qk = [qkv[:, h * dh:(h + 1) * dh] @ qkv[:, d + h * dh:d + (h + 1) * dh].T for h in range(heads)]
  return qk, qkv[:, 2 * d:] @ out


def test_mimetic_products():
  """One full-rank head: W_q W_k^T = 0.7 I + 0.7 Z and W_v W_o = -0.4 I + 0.4 Z, Z ~ N(0, 1/d)
  (diagonal mean and off-diagonal std of the products); with 4 heads each rank-16 W_q^h W_k^h^T
  keeps a clearly positive diagonal while W_v W_o (full rank) is unchanged in structure."""
  d = 64
  off = ~np.eye(d, dtype=bool)
  a1, b1, a2, b2 = init_schemes.MIMETIC
  (qk,), vo = _products(_init(_lm(d_model=d, num_layers=1, num_heads=1,
                                  attention_init="mimetic"), TOKENS[:, :-1]), d, 1)
  assert abs(np.diag(qk).mean() - a1) < 0.05 and abs(qk[off].std() / (b1 / 8) - 1) < 0.05
  assert abs(np.diag(vo).mean() + a2) < 0.05 and abs(vo[off].std() / (b2 / 8) - 1) < 0.05
  assert abs(qk[off].mean()) < 0.01 and abs(vo[off].mean()) < 0.01
  qks, vo = _products(_init(_lm(d_model=d, num_layers=1, num_heads=4, attention_init="mimetic"),
                            TOKENS[:, :-1]), d, 4)
  for qk in qks:
    assert 0.2 < np.diag(qk).mean() < a1 and abs(qk[off].mean()) < 0.01
  assert abs(np.diag(vo).mean() + a2) < 0.05
  (qk,), vo = _products(_init(_lm(d_model=d, num_layers=1, num_heads=1), TOKENS[:, :-1]), d, 1)
  assert abs(np.diag(qk).mean()) < 0.05 and abs(np.diag(vo).mean()) < 0.05  # default: no I


def test_mimetic_errors():
  with pytest.raises(UserError, match=r"attention_init='mimetic' needs num_kv_heads"):
    jax.eval_shape(_lm(d_model=16, num_layers=1, num_heads=4, num_kv_heads=2,
                       attention_init="mimetic").init, KEY, TOKENS[:, :-1])
  with pytest.raises(UserError, match=r"config\.model\.attention_init 'xavier'"):
    jax.eval_shape(_lm(d_model=16, num_layers=1, attention_init="xavier").init, KEY,
                   TOKENS[:, :-1])


def test_scaled_weight_standardization():
  """W_hat = gain (W - mean) / (std sqrt(fan_in)): zero mean and std gain/sqrt(fan_in) per output
  channel, and the conv uses it."""
  x = IMAGES[:2]
  conv = models.Conv(16, 3, standardize=True, use_bias=False)
  params = _init(conv, x)
  assert set(params) == {"kernel", "gain"}
  info = param.param_info(jax.eval_shape(conv.init, KEY, x)["params"])
  assert info["gain"][:4] == (roles.NORM, 16, 16, ("conv_out",))
  w = params["kernel"] + 0.3  # a non-zero mean that standardization must remove
  gain = np.linspace(0.5, 2.0, 16).astype(np.float32)
  w_hat = np.asarray(init_schemes.scaled_standardize(w, gain, 1 / 3.0))  # fan_in = 9
  np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(w_hat.std(axis=(0, 1, 2)), gain / 3.0, rtol=1e-4)
  y = conv.apply({"params": {"kernel": w, "gain": gain}}, x)
  ref = jax.lax.conv_general_dilated(x, w_hat, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_nf_style_resnet_trains():
  """conv='ws' on every conv (stem, branches, projections), no norms, SkipInit gains."""
  resnet = models.ResNet(width=4, blocks_per_stage=1, num_classes=4, conv="ws", norm="none",
                         branch_gain="rezero")
  shapes = jax.eval_shape(resnet.init, KEY, IMAGES[:2])["params"]
  assert "gain" in shapes["stem"] and "gain" in shapes["stage_1_block_0"]["proj"]
  assert "norm_0" not in shapes["stage_0_block_0"]
  first, last = fit(resnet, IMAGES, LABELS, steps=6, lr=1e-2)
  assert np.isfinite(last) and last < first, (first, last)


def test_rezero_lm_at_init_is_embed_norm_readout():
  model = _lm(d_model=16, num_layers=2, branch_gain="rezero", positional="learned")
  boxed = jax.jit(model.init)(KEY, TOKENS[:, :-1])["params"]
  info, params = param.param_info(boxed), param.unbox(boxed)
  assert info["block_1"]["mlp_gain"]["scale"][:4] == (roles.NORM, 1, 1, ())
  for i in range(2):
    assert params[f"block_{i}"]["attn_gain"]["scale"] == 0.0 == params[f"block_{i}"]["mlp_gain"][
        "scale"]
  tokens = TOKENS[:, :-1]
  x = params["embed"]["embedding"][tokens] + params["pos_embed"]["embedding"][:8]
  x = models.LayerNorm(use_bias=False).apply({"params": params["final_norm"]}, x)
  ref = x @ params["readout"]["kernel"]
  logits = jax.jit(model.apply)({"params": params}, tokens)
  np.testing.assert_allclose(logits, ref, rtol=1e-6, atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, tokens).std()))(params)
  assert abs(float(grads["block_0"]["attn_gain"]["scale"])) > 0  # the gains do learn


def test_fixup_resnet():
  """conv_1 and the readout start at 0, conv_0 at L^-1/2 x its default draw; scalar biases 0,
  multipliers 1; so the logits are 0 at init (loss log 4); trains."""
  kw = dict(width=4, blocks_per_stage=1, num_classes=4, norm="none")
  fixup = _init(models.ResNet(init_scheme="fixup", **kw), IMAGES[:2])
  plain = _init(models.ResNet(**kw), IMAGES[:2])
  L = 3
  assert init_schemes.fixup_scales(L) == (L ** -0.5, 0.0)
  assert init_schemes.fixup_scales(8, branch_layers=3) == (8 ** -0.25, 8 ** -0.25, 0.0)
  for name in (k for k in plain if k.startswith("stage_")):
    block, ref = fixup[name], plain[name]
    np.testing.assert_allclose(block["conv_0"]["kernel"],
                               np.asarray(ref["conv_0"]["kernel"]) * L ** -0.5, rtol=1e-6)
    np.testing.assert_array_equal(block["conv_1"]["kernel"], 0.0)
    assert block["multiplier"]["scale"] == 1.0
    assert all(block[b]["bias"] == 0.0 for b in ("bias_0a", "bias_0b", "bias_1a", "bias_1b"))
    assert "norm_0" not in block
  np.testing.assert_array_equal(fixup["readout"]["kernel"], 0.0)
  assert "stem_norm" not in fixup and fixup["stem_bias"]["bias"] == 0.0
  first, last = fit(models.ResNet(init_scheme="fixup", **kw), IMAGES, LABELS, steps=6, lr=1e-2)
  assert first == pytest.approx(math.log(4), rel=1e-6) and last < first, (first, last)


def test_resnet_config_errors():
  x = IMAGES[:1]
  with pytest.raises(UserError, match=r"init_scheme='fixup' needs config\.model\.norm='none'"):
    jax.eval_shape(models.ResNet(init_scheme="fixup").init, KEY, x)
  with pytest.raises(UserError, match=r"config\.model\.conv 'weightnorm'; valid: standard, ws"):
    jax.eval_shape(models.ResNet(conv="weightnorm").init, KEY, x)
  with pytest.raises(UserError, match=r"config\.model\.init_scheme 'he'; valid: default, fixup"):
    jax.eval_shape(models.ResNet(init_scheme="he").init, KEY, x)
  with pytest.raises(UserError, match=r"config\.model\.norm 'batchnorm'"):
    jax.eval_shape(models.ResNet(norm="batchnorm").init, KEY, x)
  with pytest.raises(UserError, match=r"init_scheme='lir' has no effect"):
    jax.eval_shape(models.ResNet(init_scheme="lir", conv="ws").init, KEY, x)
  with pytest.raises(UserError, match=r"config\.model\.branch_gain 'skip'; valid: none, rezero"):
    jax.eval_shape(_lm(d_model=16, num_layers=1, branch_gain="skip").init, KEY, TOKENS[:, :-1])


def test_init_scale_is_identity_by_default():
  """Dense(init_scale=1.0) draws exactly what Dense does; init_scale=s scales the draw by s."""
  x = jnp.ones((2, 8))
  base = models.Dense(32).init(KEY, x)["params"]["kernel"].value
  same = models.Dense(32, init_scale=1.0).init(KEY, x)["params"]["kernel"].value
  half = models.Dense(32, init_scale=0.5).init(KEY, x)["params"]["kernel"].value
  np.testing.assert_array_equal(base, same)
  np.testing.assert_allclose(half, 0.5 * base, rtol=1e-6)
