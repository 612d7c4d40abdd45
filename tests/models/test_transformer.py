"""TransformerLM: shapes, metadata, causality, tying, residual multiplier, and fitting."""

import dataclasses

import chex
import jax
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.param import roles
from tests.models.fitting import KEY, fit

V, D, LAYERS, HEADS = 32, 32, 2, 4
TOKENS = np.random.default_rng(0).integers(0, V, (4, 17))



def _lm(**kw):
  kw = dict(vocab_size=V, d_model=D, num_layers=LAYERS, num_heads=HEADS, max_len=64) | kw
  return models.TransformerLM(**kw)


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
  assert info["embed"]["embedding"] == (roles.INPUT, V, D, ("vocab", "embed"))
  assert info["pos_embed"]["embedding"] == (roles.INPUT, 64, D, ("position", "embed"))
  assert info["readout"]["kernel"] == (roles.READOUT, D, V, ("embed", "vocab"))
  block = info["block_1"]
  assert block["attn"]["qkv"]["kernel"] == (roles.HIDDEN, D, 3 * D, ("embed", "heads"))
  assert block["attn"]["out"]["kernel"] == (roles.HIDDEN, D, D, ("heads", "embed"))
  assert block["mlp"]["up"]["kernel"] == (roles.HIDDEN, D, 4 * D, ("embed", "mlp"))
  assert block["mlp"]["down"]["kernel"] == (roles.HIDDEN, 4 * D, D, ("mlp", "embed"))
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
  model = _lm(parametrization=NoResidual(), num_layers=1)
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
  with pytest.raises(ValueError, match="unknown positional"):
    jax.eval_shape(_lm(positional="alibi").init, KEY, TOKENS)
  with pytest.raises(ValueError, match="max_len"):
    jax.eval_shape(_lm().init, KEY, np.zeros((1, 65), np.int32))
