"""TransformerLM: shapes, metadata, causality, tying, residual multiplier, and fitting."""

import dataclasses

import chex
import jax
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.errors import UserError
from jaxlab.param import roles
from jaxlab.models.context import LayerContext
from tests.models.fitting import KEY, fit

BLOCK_KEYS = tuple(f.name for f in dataclasses.fields(models.BlockOptions))

V, D, LAYERS, HEADS = 32, 32, 2, 4
TOKENS = np.random.default_rng(0).integers(0, V, (4, 17))



def _lm(**kw):
  """A TransformerLM; BlockOptions' keys go into block_options (as in models.build)."""
  options = models.BlockOptions(**{k: kw.pop(k) for k in BLOCK_KEYS if k in kw})
  kw = dict(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS, max_len=64) | kw
  return models.TransformerLM(**kw, block_options=options)


def _params(model, tokens=TOKENS[:, :-1]):
  return jax.jit(model.init)(KEY, tokens)["params"]


def _shapes(model):
  """Boxed parameter shapes without compiling anything."""
  return jax.eval_shape(model.init, KEY, TOKENS[:, :-1])["params"]


def _fit(model, tokens, steps=30, lr=1e-2):
  return fit(model, tokens[:, :-1], tokens[:, 1:], steps, lr)


def test_metadata_and_block_names():
  boxed = _shapes(_lm(positional="learned"))
  info = param.param_info(boxed)
  assert sorted(info) == ["block_0", "block_1", "embed", "final_norm", "pos_embed", "readout"]
  assert info["embed"]["embedding"][:4] == (roles.INPUT, V, D, ("vocab", "embed"))
  assert info["pos_embed"]["embedding"][:4] == (roles.INPUT, 64, D, ("position", "embed"))
  assert info["readout"]["kernel"][:4] == (roles.READOUT, D, V, ("embed", "vocab"))
  block = info["block_1"]
  assert block["attn"]["qkv"]["kernel"][:4] == (roles.HIDDEN, D, 3 * D, ("embed", "heads"))
  assert block["attn"]["out"]["kernel"][:4] == (roles.HIDDEN, D, D, ("heads", "embed"))
  assert block["mlp"]["up"]["kernel"][:4] == (roles.HIDDEN, D, 4 * D, ("embed", "mlp"))
  assert block["mlp"]["down"]["kernel"][:4] == (roles.HIDDEN, 4 * D, D, ("mlp", "embed"))
  assert block["attn_norm"]["scale"].role == roles.NORM
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(boxed))))


def test_tied_vs_untied_param_count():
  tied = models.num_params(_shapes(_lm(tie_embeddings=True)))
  untied = models.num_params(_shapes(_lm(tie_embeddings=False)))
  assert untied - tied == V * D
  assert "readout" not in _shapes(_lm(tie_embeddings=True))
  per_block = 3 * D * D + D * D + 2 * 4 * D * D + 2 * D  # qkv, out, mlp, two norm gains
  assert tied == V * D + LAYERS * per_block + D


class CausalityTest(chex.TestCase):

  def _check(self, **kw):
    model = _lm(**kw)
    params = _params(model)
    apply = self.variant(lambda p, t: model.apply({"params": p}, t))
    tokens = TOKENS[:, :-1]
    t = 9
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % V
    a, b = np.asarray(apply(params, tokens)), np.asarray(apply(params, changed))
    assert a.shape == (4, 16, V)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).min(axis=-1).max() > 1e-4  # later positions do change

  @chex.variants(with_jit=True)
  def test_causal_rope(self):
    self._check(positional="rope", num_layers=1)

  @chex.variants(with_jit=True)
  def test_causal_learned_rmsnorm_gqa_tied(self):
    self._check(positional="learned", norm="rmsnorm", num_kv_heads=2, tie_embeddings=True)


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_adam_fits_fixed_batch(positional):
  first, last = _fit(_lm(positional=positional), TOKENS)
  assert first > 0.8 * np.log(V) and last < 0.4 * first, (first, last)


@dataclasses.dataclass(frozen=True)
class NoResidual(param.Parametrization):
  """Residual branches multiplied by 0: the LM reduces to readout(norm(embed(tokens)))."""

  def residual_multiplier(self, num_layers):
    return 0.0


def test_residual_multiplier_applied():
  model = _lm(ctx=LayerContext(parametrization=NoResidual()), num_layers=1)
  params = jax.tree.map(np.asarray, param.unbox(_params(model)))
  logits = jax.jit(model.apply)({"params": params}, TOKENS[:, :-1])
  x = params["embed"]["embedding"][TOKENS[:, :-1]]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  ref = (x * params["final_norm"]["scale"]) @ params["readout"]["kernel"]
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
  full = jax.jit(_lm(num_layers=1).apply)({"params": params}, TOKENS[:, :-1])
  assert np.abs(np.asarray(full) - ref).max() > 1e-3  # SP does use the blocks


def test_build_and_errors():
  cfg = ml_collections.ConfigDict(dict(name="transformer", vocab_size=V, d_model=D,
                                       num_layers=LAYERS, num_heads=HEADS, max_len=64,
                                       tie_embeddings=True, norm="rmsnorm"))
  assert models.build(cfg) == _lm(tie_embeddings=True, norm="rmsnorm")
  with pytest.raises(UserError, match="unknown positional"):
    jax.eval_shape(_lm(positional="alibi").init, KEY, TOKENS)
  with pytest.raises(UserError, match="max_len"):
    jax.eval_shape(_lm().init, KEY, np.zeros((1, 65), np.int32))


NORM_NAMES = {  # norm_placement -> the norms of every block (2 layers; mix_ratio 0.5)
    "pre": {"attn_norm", "mlp_norm"}, "lns": {"attn_norm", "mlp_norm"},
    "post": {"attn_post_norm", "mlp_post_norm"}, "deepnorm": {"attn_post_norm", "mlp_post_norm"},
    "peri": {"attn_norm", "attn_out_norm", "mlp_norm", "mlp_out_norm"}, "none": set()}


@pytest.mark.parametrize("placement", sorted(NORM_NAMES) + ["mix"])
def test_norm_placement_structure(placement):
  boxed = _shapes(_lm(norm_placement=placement, mix_ratio=0.5))
  for i in range(LAYERS):
    kind = ("post" if i == 0 else "pre") if placement == "mix" else placement
    assert {k for k in boxed[f"block_{i}"] if "norm" in k} == NORM_NAMES[kind], (placement, i)
  assert ("final_norm" in boxed) == (placement not in ("post", "deepnorm"))
  info = param.param_info(boxed)
  for leaf in jax.tree_util.tree_leaves(info["block_0"],
                                        is_leaf=lambda x: isinstance(x, param.ParamInfo)):
    assert leaf.role in (roles.HIDDEN, roles.NORM)


def test_depth_keys_build_and_errors():
  cfg = ml_collections.ConfigDict(dict(
      name="transformer", vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS,
      max_len=64, norm_placement="peri", branch_gain="rezero", init_scheme="lir",
      attention_init="mimetic"))
  assert models.build(cfg) == _lm(norm_placement="peri", branch_gain="rezero",
                                  init_scheme="lir", attention_init="mimetic")
  for key in ("norm_placement", "mix_ratio", "branch_gain", "init_scheme", "attention_init"):
    assert key in models.config_keys(models.TransformerLM)
  with pytest.raises(UserError, match=r"config\.model\.init_scheme 'fixup'; valid: default, lir"):
    jax.eval_shape(_lm(init_scheme="fixup").init, KEY, TOKENS)
  with pytest.raises(UserError, match="unknown norm 'batchnorm'"):
    jax.eval_shape(_lm(norm="batchnorm").init, KEY, TOKENS)


@pytest.mark.parametrize("use_bias", [False, True])
def test_crmsnorm_compressed_stream(use_bias):
  """norm='crmsnorm': stream d-1 wide, attention/MLP widths from d_model, no norm params,
  readout bias only with use_bias."""
  info = param.param_info(_shapes(_lm(norm="crmsnorm", use_bias=use_bias,
                                      positional="learned")))
  assert info["embed"]["embedding"].fan_out == D - 1
  assert info["pos_embed"]["embedding"].fan_out == D - 1
  block = info["block_0"]
  assert not any("norm" in k for k in block) and "final_norm" not in info
  assert block["attn"]["qkv"]["kernel"][1:3] == (D - 1, 3 * D)
  assert block["attn"]["out"]["kernel"][1:3] == (D, D - 1)
  assert block["mlp"]["up"]["kernel"][1:3] == (D - 1, 4 * D)
  assert block["mlp"]["down"]["kernel"][1:3] == (4 * D, D - 1)
  assert info["readout"]["kernel"][1:3] == (D - 1, V)
  assert ("bias" in info["readout"]) == use_bias
  first, last = _fit(_lm(norm="crmsnorm", use_bias=use_bias, num_layers=1), TOKENS, steps=5)
  assert np.isfinite(last) and last < first
