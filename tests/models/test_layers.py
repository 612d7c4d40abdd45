"""Layer contract: ParamMeta on every parameter, SP init, forward values vs plain-jnp references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from jaxlab import param
from jaxlab.models import attention, layers, norms
from jaxlab.models.rope import apply_rope
from jaxlab.quant.policy import QuantPolicy
from jaxlab.param import roles
from jaxlab.models.context import LayerContext
from tests.models.references import reference

# rbg keys: threefry initialisers take seconds to compile on CPU.
KEY = jax.random.key(0, impl="rbg")


@dataclasses.dataclass(frozen=True)
class Doubling(param.Parametrization):
  """Test parametrization: every forward multiplier is 2."""

  name: str = "doubling"

  def forward_multiplier(self, role, fan_in, fan_out):
    return 2.0


def _init(module, *args, method=None):
  return jax.jit(lambda key: module.init(key, *args, method=method))(KEY)["params"]


def _apply(module, params, *args, method=None):
  """Jitted apply (one compile instead of many eager op dispatches)."""
  return jax.jit(lambda p: module.apply({"params": p}, *args, method=method))(params)


def _infos(params):
  tree = param.param_info(params)
  return dict(jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, param.ParamInfo)))


def _by_name(params):
  return {jax.tree_util.keystr(k): v for k, v in _infos(params).items()}


X = np.ones((2, 5), np.float32)


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("module,args,expected", [
    (layers.Dense(7), (X,), {"['kernel']": ("hidden", 5, 7, ("embed", "mlp")),
                             "['bias']": ("bias", 1, 7, ("mlp",))}),
    (layers.Readout(3, use_bias=False), (X,), {"['kernel']": ("readout", 5, 3,
                                                              ("embed", "classes"))}),
    (layers.Conv(6, (3, 2), role=roles.INPUT), (np.ones((1, 4, 4, 3), np.float32),),
     {"['kernel']": ("input", 18, 6, ("kernel_h", "kernel_w", "conv_in", "conv_out")),
      "['bias']": ("bias", 1, 6, ("conv_out",))}),
    (layers.Embed(11, 5), (np.zeros((2,), np.int32),),
     {"['embedding']": ("input", 11, 5, ("vocab", "embed"))}),
    (layers.PositionEmbedding(9, 5), (4,),
     {"['embedding']": ("input", 9, 5, ("position", "embed"))}),
    (norms.LayerNorm(), (X,), {"['scale']": ("norm", 5, 5, ("embed",)),
                                "['bias']": ("bias", 1, 5, ("embed",))}),
    (norms.RMSNorm(), (X,), {"['scale']": ("norm", 5, 5, ("embed",))}),
    (attention.Attention(2, head_dim=3, num_kv_heads=1, use_bias=False), (np.ones((1, 4, 5), np.float32),),
     {"['qkv']['kernel']": ("hidden", 5, 12, ("embed", "heads")),
      "['out']['kernel']": ("hidden", 6, 5, ("heads", "embed"))}),
])
def test_param_metadata(module, args, expected):
  params = _init(module, *args)
  got = {k: tuple(v)[:4] for k, v in _by_name(params).items()}
  assert got == expected
  shapes = {jax.tree_util.keystr(k): v.shape
            for k, v in jax.tree_util.tree_leaves_with_path(param.unbox(params))}
  assert set(shapes) == set(expected)


def test_unknown_logical_axis_rejected():
  with pytest.raises(ValueError, match="unknown logical axes"):
    _init(layers.Dense(3, kernel_axes=("embed", "nonsense")), X)


def test_sp_init_std_and_fixed_inits():
  params = param.unbox(_init(layers.Dense(512), np.ones((1, 512), np.float32)))
  std = float(np.std(params["kernel"]))
  assert abs(std * np.sqrt(512) - 1.0) < 0.05
  assert abs(float(np.mean(params["kernel"]))) < 0.01 / np.sqrt(512) * 10
  assert np.all(params["bias"] == 0)
  norm = param.unbox(_init(norms.LayerNorm(), np.ones((1, 8), np.float32)))
  assert np.all(norm["scale"] == 1) and np.all(norm["bias"] == 0)
  emb = param.unbox(_init(layers.Embed(1024, 64), np.zeros((1,), np.int32)))
  assert abs(float(np.std(emb["embedding"])) * 32 - 1.0) < 0.05


def test_dense_matches_reference():
  x = _normal(1, (3, 4, 6))
  m = layers.Dense(5)
  params = param.unbox(_init(m, x))
  params["bias"] = np.arange(5.0, dtype=np.float32)
  y = _apply(m, params, x)
  np.testing.assert_allclose(y, x @ np.asarray(params["kernel"]) + params["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_conv_matches_reference(strides, padding):
  x = _normal(2, (2, 7, 7, 3))
  m = layers.Conv(4, 3, strides=strides, padding=padding)
  params = param.unbox(_init(m, x))
  params["bias"] = np.arange(4.0, dtype=np.float32)
  y = _apply(m, params, x)
  ref = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest"))(x, params["kernel"]) + params["bias"]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_embed_lookup_and_attend():
  m = layers.Embed(10, 4)
  ids = np.array([[1, 7, 7, 0]])
  params = param.unbox(_init(m, ids))
  table = np.asarray(params["embedding"])
  np.testing.assert_array_equal(_apply(m, params, ids), table[ids])
  x = _normal(3, (2, 3, 4))
  logits = _apply(m, params, x, method=layers.Embed.attend)
  assert logits.shape == (2, 3, 10)
  np.testing.assert_allclose(logits, x @ table.T, rtol=1e-5, atol=1e-5)


def _norm_ref(x, eps, center):
  mu = x.mean(-1, keepdims=True) if center else 0.0
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("cls,center", [(norms.LayerNorm, True), (norms.RMSNorm, False)])
def test_norms_match_reference(cls, center):
  x = _normal(4, (3, 8)) * 3 + 1
  m = cls()
  params = param.unbox(_init(m, x))
  params["scale"] = np.linspace(0.5, 2.0, 8, dtype=np.float32)
  y = _apply(m, params, x)
  ref = _norm_ref(x, 1e-5, center) * np.asarray(params["scale"])
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def _attention_ref(q, k, v, scale, causal, mask=None):
  return np.asarray(reference(*(jnp.asarray(a) for a in (q, k, v)), scale, causal, mask))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_op_matches_reference(causal, kv_heads):
  q = _normal(50, (2, 6, 4, 8))
  k = _normal(51, (2, 6, kv_heads, 8))
  v = _normal(52, (2, 6, kv_heads, 8))
  attend = jax.jit(lambda *a: pallas_kernels.attention(*a, scale=0.3, causal=causal))
  out = attend(q, k, v)
  np.testing.assert_allclose(out, _attention_ref(q, k, v, 0.3, causal), rtol=1e-4, atol=1e-5)


def test_attention_op_padding_mask():
  q, k, v = (_normal(seed, (2, 5, 2, 4)) for seed in (60, 61, 62))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
  attend = jax.jit(lambda q, k, v, m: pallas_kernels.attention(
      q, k, v, scale=0.5, causal=True, mask=m))
  out = attend(q, k, v, mask)
  np.testing.assert_allclose(out, _attention_ref(q, k, v, 0.5, True, mask), rtol=1e-4,
                             atol=1e-5)


def test_attention_module_matches_reference():
  x = _normal(7, (2, 5, 8))
  m = attention.Attention(2, causal=True, use_bias=False)
  params = param.unbox(_init(m, x))
  y = _apply(m, params, x)
  qkv = (x @ np.asarray(params["qkv"]["kernel"])).reshape(2, 5, 3, 2, 4)
  o = _attention_ref(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], 1 / np.sqrt(4), True)
  ref = o.reshape(2, 5, 8) @ np.asarray(params["out"]["kernel"])
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_rope_preserves_norm_and_is_relative():
  x = _normal(8, (1, 1, 1, 16))
  y = _normal(9, (1, 1, 1, 16))

  @jax.jit
  def rot(a, pos):
    return apply_rope(a, jnp.reshape(pos, (1,)))[0, 0, 0]

  for pos in (0, 3, 100):
    np.testing.assert_allclose(np.linalg.norm(rot(x, pos)), np.linalg.norm(x), rtol=1e-5)
  dots = [float(rot(x, m) @ rot(y, n)) for m, n in [(5, 2), (13, 10), (103, 100)]]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-4, atol=1e-4)
  other = float(rot(x, 7) @ rot(y, 2))  # different offset -> different product
  assert abs(other - dots[0]) > 1e-3
  np.testing.assert_allclose(rot(x, 0), x[0, 0, 0], rtol=1e-6)  # position 0 is the identity


@pytest.mark.parametrize("module,args,method", [
    (layers.Dense(4), (X,), None),
    (layers.Readout(4), (X,), None),
    (layers.Conv(4, 3), (np.ones((1, 4, 4, 2), np.float32),), None),
    (layers.Embed(6, 5), (np.array([0, 3]),), None),
    (layers.Embed(6, 5), (X,), layers.Embed.attend),
    (norms.LayerNorm(), (X * np.arange(5.0, dtype=np.float32),), None),
    (layers.PositionEmbedding(4, 5), (3,), None),
])
def test_forward_multiplier_honoured(module, args, method):
  params = _init(module, *args, method=method)
  base = _apply(module, params, *args, method=method)
  doubled = _apply(module.clone(ctx=LayerContext(parametrization=Doubling())), params, *args,
                   method=method)
  assert float(np.abs(base).max()) > 0
  np.testing.assert_allclose(doubled, 2 * base, rtol=1e-5, atol=1e-6)


def test_quant_policy_sees_module_path():
  seen = []

  class Spy(QuantPolicy):
    def dot_general(self, module_path, role=None, weight_operand="rhs"):
      seen.append(module_path)
      return super().dot_general(module_path, role)

  m = attention.Attention(2, ctx=LayerContext(quant=Spy()))
  _init(m, np.ones((1, 3, 4), np.float32))
  assert seen == ["qkv", "out"]
