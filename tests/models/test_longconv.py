"""LongConvLM: shapes, metadata, causality, kernel-length independence, fitting, build()."""

import dataclasses

import chex
import jax
import ml_collections
import numpy as np
import pytest

from jaxlab.configs import shakespeare_longconv, shakespeare_lm
from jaxlab import models, param
from jaxlab.errors import UserError
from jaxlab.models.longconv import LongConvMixer
from jaxlab.param import roles
from jaxlab.models.context import LayerContext
from tests.models.fitting import KEY, fit

V, D, LAYERS, MAX_LEN = 16, 16, 2, 32
TOKENS = np.random.default_rng(0).integers(0, V, (4, 17))


def _lm(**kw):
  kw = dict(vocab_size=V, d_model=D, num_layers=LAYERS, max_len=MAX_LEN, kernel_dim=4) | kw
  return models.LongConvLM(**kw)


def _shapes(model, tokens=TOKENS[:, :-1]):
  return jax.eval_shape(model.init, KEY, tokens)["params"]


def test_metadata_and_shapes():
  model = _lm()
  boxed = _shapes(model)
  info = param.param_info(boxed)
  assert sorted(info) == ["block_0", "block_1", "embed", "final_norm", "readout"]
  assert info["embed"]["embedding"][:4] == (roles.INPUT, V, D, ("vocab", "embed"))
  assert info["readout"]["kernel"][:4] == (roles.READOUT, D, V, ("embed", "vocab"))
  mixer = info["block_1"]["mixer"]
  assert mixer["in_proj"]["kernel"][:4] == (roles.HIDDEN, D, 3 * D, ("embed", "mlp"))
  assert mixer["out_proj"]["kernel"][:4] == (roles.HIDDEN, D, D, ("mlp", "embed"))
  assert mixer["short_conv"]["kernel"][:4] == (roles.INPUT, 3, 3 * D, ("kernel_w", "mlp"))
  assert mixer["short_conv"]["bias"][:4] == (roles.BIAS, 1, 3 * D, ("mlp",))
  # SGConv with kernel_dim 4 and length 32: scales of 4, 8, 16, 32 taps (4 * 15 >= 32 > 4 * 7)
  assert sorted(mixer["long_conv"]) == ["kernel_0", "kernel_1", "kernel_2", "kernel_3", "skip"]
  assert mixer["long_conv"]["kernel_3"][:4] == (roles.INPUT, 4, D, ("kernel_w", "mlp"))
  assert mixer["long_conv"]["skip"][:4] == (roles.NORM, D, D, ("mlp",))
  assert info["block_0"]["mlp"]["up"]["kernel"][:4] == (roles.HIDDEN, D, 4 * D, ("embed", "mlp"))
  assert info["block_0"]["mixer_norm"]["scale"].role == roles.NORM
  is_info = lambda x: isinstance(x, param.ParamInfo)
  assert (len(jax.tree_util.tree_leaves(info, is_leaf=is_info))
          == len(jax.tree_util.tree_leaves(param.unbox(boxed))))
  # parameters do not depend on the sequence length (the kernel is max_len long, then sliced)
  assert jax.tree.map(np.shape, _shapes(model, TOKENS[:, :5])) == jax.tree.map(np.shape, boxed)
  logits = jax.eval_shape(model.apply, {"params": boxed}, TOKENS[:, :-1])
  assert logits.shape == (4, 16, V)
  with pytest.raises(UserError, match="max_len"):
    jax.eval_shape(model.init, KEY, np.zeros((1, MAX_LEN + 1), np.int32))


class CausalityTest(chex.TestCase):
  """Perturbing token t leaves the logits at positions < t unchanged and changes those >= t."""

  @chex.variants(with_jit=True)
  def test_causal(self):
    params = jax.jit(_lm().init)(KEY, TOKENS[:, :-1])["params"]
    tokens = TOKENS[:, :-1]
    t = 9
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % V
    for implementation, atol in (("xla", 0.0), (None, 1e-5)):  # None: FFT on CPU
      model = _lm(implementation=implementation)
      apply = self.variant(lambda p, x, model=model: model.apply({"params": p}, x))
      a, b = np.asarray(apply(params, tokens)), np.asarray(apply(params, changed))
      np.testing.assert_allclose(a[:, :t], b[:, :t], rtol=0, atol=atol, err_msg=implementation)
      assert np.abs(a[:, t:] - b[:, t:]).min(axis=-1).max() > 1e-3, implementation
    # a prefix gives the same logits as the full sequence on its positions
    np.testing.assert_allclose(apply(params, tokens[:, :t]), a[:, :t], rtol=1e-4, atol=1e-5)


def test_mixer_pallas_interpret_matches_xla():
  """`implementation` reaches both kernels (short depthwise conv1d and long conv)."""
  x = np.random.default_rng(3).standard_normal((1, 8, 4)).astype(np.float32)
  mixer = LongConvMixer(max_len=8, kernel_dim=2)
  params = mixer.init(KEY, x)["params"]
  want = LongConvMixer(max_len=8, kernel_dim=2, implementation="xla").apply({"params": params}, x)
  got = LongConvMixer(max_len=8, kernel_dim=2,
                      implementation="pallas_interpret").apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class NoResidual(param.Parametrization):
  def residual_multiplier(self, num_layers):
    return 0.0


def test_residual_multiplier_applied():
  """With every branch multiplied by 0 the logits depend on embed / final_norm / readout only."""
  model = _lm(num_layers=1, ctx=LayerContext(parametrization=NoResidual()))
  tokens = TOKENS[:, :8]
  params = param.unbox(model.init(KEY, tokens)["params"])
  bumped = dict(params, block_0=jax.tree.map(lambda v: v + 1.0, params["block_0"]))
  np.testing.assert_allclose(model.apply({"params": params}, tokens),
                             model.apply({"params": bumped}, tokens), rtol=1e-6, atol=1e-6)


def test_adam_fits_fixed_batch():
  first, last = fit(_lm(num_layers=1), TOKENS[:, :-1], TOKENS[:, 1:], steps=25, lr=1e-2)
  assert first > 0.8 * np.log(V) and last < 0.4 * first, (first, last)


def test_build_and_errors():
  cfg = ml_collections.ConfigDict(dict(name="longconv", vocab_size=V, d_model=D,
                                       num_layers=LAYERS, max_len=MAX_LEN, kernel_dim=4,
                                       short_taps=4, norm="rmsnorm"))
  assert models.build(cfg) == _lm(short_taps=4, norm="rmsnorm")
  assert models.LongConvLM.width_of(cfg) == D and models.LongConvLM.depth_of(cfg) == LAYERS
  with pytest.raises(UserError, match="config.model.norm='crmsnorm'"):
    jax.eval_shape(_lm(norm="crmsnorm").init, KEY, TOKENS)


def test_shipped_config_near_transformer_size():
  tokens = np.zeros((1, 256), np.int32)

  def count(config_module):
    model = models.build(dict(config_module.get_config().model.to_dict(), vocab_size=256))
    return models.num_params(jax.eval_shape(model.init, KEY, tokens)["params"]), model

  n, model = count(shakespeare_longconv)
  assert model.max_len == shakespeare_longconv.get_config().data.seq_len
  ref, _ = count(shakespeare_lm)
  assert 0.9 < n / ref < 1.1, (n, ref)
