"""Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm (Jiang et al. 2023): identical outputs on real
shakespeare windows.

The Pre-LN model takes 3 Adam steps (lr 1e-2) on shakespeare batches; since that moves the norm
gains and biases by only ~0.03, every norm gain is then multiplied by 1 + 0.3 N(0, 1) and every
bias (norms and linear layers) shifted by 0.3 N(0, 1) to emulate a longer training run.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import data, models, param
from jaxlab.depth import norm_conversion
from tests.models.fitting import KEY

SOURCES = {
    "no_bias_rope_untied": dict(use_bias=False, positional="rope", tie_embeddings=False),
    "bias_learned_tied": dict(use_bias=True, positional="learned", tie_embeddings=True),
}


@pytest.fixture(scope="module")
def windows(tfds_data_dir):
  cfg = {"name": "shakespeare", "data_dir": tfds_data_dir, "task": "lm", "seq_len": 32,
         "text_key": "text"}
  batches = list(itertools.islice(data.make_train_iterator(cfg, batch_size=2, seed=0), 4))
  return [(b["inputs"], b["targets"]) for b in batches]


def _trained(model, windows):
  params = param.unbox(jax.jit(model.init)(KEY, windows[0][0])["params"])
  opt = optax.adam(1e-2)
  inputs = jnp.stack([w[0] for w in windows[:3]])
  targets = jnp.stack([w[1] for w in windows[:3]])

  @jax.jit
  def train(p):
    def step(carry, batch):
      p, s = carry
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
          model.apply({"params": p}, batch[0]), batch[1]).mean()
      updates, s = opt.update(jax.grad(loss)(p), s)
      return (optax.apply_updates(p, updates), s), None

    return jax.lax.scan(step, (p, opt.init(p)), (inputs, targets))[0][0]

  params = train(params)
  rng = np.random.default_rng(0)

  def perturb(path, w):
    names = [str(getattr(k, "key", k)) for k in path]
    noise = 0.3 * rng.standard_normal(w.shape).astype(np.float32)
    if names[-1] == "scale":
      return w * (1 + noise)
    return w + noise if names[-1] == "bias" else w

  return jax.tree_util.tree_map_with_path(perturb, params)


@pytest.mark.parametrize("source", SOURCES)
def test_conversion_preserves_outputs(source, windows):
  cfg = dict(name="transformer", vocab_size=256, d_model=32, num_layers=2, num_heads=4,
             max_len=32, **SOURCES[source])
  model = models.build(cfg)
  params = _trained(model, windows)
  tokens = windows[3][0]  # a window the model did not train on
  ref = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
  for convert, stream in ((norm_conversion.to_pre_rmsnorm, 32),
                          (norm_conversion.to_pre_crmsnorm, 31)):
    new_params, new_cfg = convert(params, cfg)
    target = models.build(new_cfg)
    shapes = param.unbox(jax.eval_shape(target.init, KEY, tokens)["params"])
    assert jax.tree.structure(shapes) == jax.tree.structure(new_params), convert.__name__
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes),
                                                   jax.tree.leaves(new_params)))
    assert new_params["embed"]["embedding"].shape == (256, stream)
    out = np.asarray(jax.jit(target.apply)({"params": new_params}, tokens))
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 1e-5, (convert.__name__, err)
  # the zero-mean stream: centred embeddings, and the rmsnorm model's block norms are identities
  rms_params, rms_cfg = norm_conversion.to_pre_rmsnorm(params, cfg)
  assert rms_cfg["norm"] == "rmsnorm" and not rms_cfg["tie_embeddings"]
  np.testing.assert_allclose(rms_params["embed"]["embedding"].mean(-1), 0.0, atol=1e-6)
  np.testing.assert_array_equal(rms_params["block_1"]["mlp_norm"]["scale"], 1.0)
  assert "attn_norm" not in norm_conversion.to_pre_crmsnorm(params, cfg)[0]["block_0"]


def test_crmsnorm_is_rmsnorm_of_the_implied_vector():
  x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
  full = np.concatenate([x, -x.sum(-1, keepdims=True)], -1)
  y = models.norms.CRMSNorm().apply({}, x)
  ref = full / np.sqrt((full ** 2).mean(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, ref[:, :-1], rtol=1e-5, atol=1e-6)


def test_errors():
  base = dict(name="transformer", num_layers=2)
  with pytest.raises(ValueError, match=r"config\.model\.norm must be 'layernorm'"):
    norm_conversion.to_pre_rmsnorm({}, dict(base, norm="rmsnorm"))
  with pytest.raises(ValueError, match=r"config\.model\.norm_placement must be 'pre'"):
    norm_conversion.to_pre_crmsnorm({}, dict(base, norm_placement="post"))
