"""Per-role scale tables (unit-scaling's test_optim habit) and SP equivalence at the base width."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab import models, optim, param
from jaxlab.errors import UserError
from jaxlab.param import roles
from jaxlab.train.init import param_info_of
from jaxlab.models.context import LayerContext

FANS = {roles.INPUT: (784, 256), roles.HIDDEN: (256, 1024), roles.READOUT: (256, 10),
        roles.BIAS: (1, 256), roles.NORM: (256, 256)}
NAMES = {roles.INPUT: ("input", "mlp"), roles.HIDDEN: ("embed", "mlp"),
         roles.READOUT: ("embed", "classes"), roles.BIAS: ("mlp",), roles.NORM: ("embed",)}


def pinfo(role, fan_in=None, fan_out=None, in_block=False):
  """A ParamInfo of this role (fans from FANS unless given), outside residual blocks."""
  fi, fo = FANS[role]
  return param.ParamInfo(role, fan_in or fi, fan_out or fo, NAMES[role], in_block)


@pytest.mark.parametrize("role", roles.ALL)
def test_mup_at_base_width_is_sp_exactly(role):
  sp, mup = param.SP(), param.get("mup", base_width=256).resolve(256)
  fi, fo = FANS[role]
  assert mup.init_std(role, fi, fo) == sp.init_std(role, fi, fo)
  assert mup.forward_multiplier(role, fi, fo) == sp.forward_multiplier(role, fi, fo) == 1.0
  for family in ("adam", "sgd"):
    assert mup.lr_scale(pinfo(role, fi, fo), family) == sp.lr_scale(pinfo(role, fi, fo), family) == 1.0
  assert mup.attention_scale(64) == sp.attention_scale(64)


def test_mup_table_at_width_multiplier_4():
  p = param.get("mup", base_width=64).resolve(256)
  assert p.width_mult == 4.0
  # Tensor Programs V, Table 8 (microsoft/mup form), relative to SP at the base width.
  expected = {  # role: (forward multiplier, init std * sqrt(fan_in), Adam LR, SGD LR)
      roles.INPUT: (1.0, 1.0, 1.0, 4.0),
      roles.HIDDEN: (1.0, 1.0, 0.25, 1.0),
      roles.READOUT: (0.25, 2.0, 1.0, 4.0),
  }
  for role, (mult, std, adam, sgd) in expected.items():
    fi, fo = FANS[role]
    assert p.forward_multiplier(role, fi, fo) == mult
    assert p.init_std(role, fi, fo) * math.sqrt(fi) == pytest.approx(std)
    assert (p.lr_scale(pinfo(role, fi, fo), "adam"), p.lr_scale(pinfo(role, fi, fo), "sgd")) == (adam, sgd)
  for role in (roles.BIAS, roles.NORM):
    assert (p.lr_scale(pinfo(role), "adam"), p.lr_scale(pinfo(role), "sgd")) == (1.0, 4.0)
  assert p.attention_scale(64) == pytest.approx(1 / 16)  # sqrt(base head dim 16) / 64
  assert param.get("mup", base_width=64, zero_readout=True).resolve(256).init_std(
      roles.READOUT, 256, 10) == 0.0


def test_scale_by_parametrization_scales_each_update_by_its_role():
  p = param.get("mup", base_width=16).resolve(64)
  model = models.MLP(hidden_widths=(64, 64), num_classes=10, ctx=LayerContext(parametrization=p))
  info = param_info_of(model, np.zeros((1, 8, 8, 1), np.float32))
  tx = optim.scale_by_parametrization(p, info, "adam")
  ones = jax.tree.map(lambda i: jnp.ones(()), info, is_leaf=lambda x: isinstance(x, param.ParamInfo))
  updates, _ = tx.update(ones, tx.init(ones))
  assert float(updates["dense_1"]["kernel"]) == 0.25  # hidden: 1/m
  assert float(updates["dense_0"]["kernel"]) == 1.0  # input
  assert float(updates["readout"]["kernel"]) == 1.0  # readout (the 1/m is in the forward)
  assert float(updates["dense_1"]["bias"]) == 1.0
  with pytest.raises(UserError, match="no parametrization LR rule"):
    optim.optimizer_family("rmsprop")


@pytest.mark.parametrize("cfg,width", [({"name": "mlp", "hidden_widths": (128, 128)}, 128),
                                       ({"name": "resnet", "width": 32}, 32),
                                       ({"name": "vit", "dim": 96}, 96),
                                       ({"name": "transformer"}, 256),
                                       ({"name": "convnext", "widths": (8, 16)}, 8),
                                       ({"name": "longconv", "d_model": 48}, 48)])
def test_width_of_each_model(cfg, width):
  assert models.MODELS[cfg["name"]].width_of(ml_collections.ConfigDict(cfg)) == width


def test_unknown_option_is_named_with_the_options_taken():
  with pytest.raises(UserError, match=r"^config.param.zero_readout: parametrization 'sp' takes no "
                     r"option 'zero_readout'; its options: base_width, base_depth$"):
    param.get("sp", zero_readout=True)
  with pytest.raises(UserError, match=r"config.param.name='bogus'; valid: completep"):
    param.get("bogus")


def test_options_come_from_the_class_fields():
  assert param.options("sp") == ("base_width", "base_depth")
  assert param.options("mup") == ("base_width", "base_depth", "zero_readout", "wd_convention")
  assert param.options("completep") == ("base_width", "base_depth", "zero_readout",
                                        "wd_convention", "alpha")
  with pytest.raises(UserError, match="config.param.wd_convention='decoupled'; valid"):
    param.get("mup", wd_convention="decoupled")


def test_a_config_param_block_goes_straight_to_get():
  from jaxlab.configs import common
  block = common.base_config().param
  assert param.get(**block) == param.SP()
  block.update(name="mup", base_width=64)
  block.zero_readout = True
  assert param.get(**block) == param.MuP(base_width=64, zero_readout=True)


@pytest.mark.parametrize("name,alpha", [("depth_mup", 0.5), ("completep", 1.0)])
def test_depth_mup_table(name, alpha):
  """Residual branches x (L/L_base)^-alpha; hidden Adam LR x (L/L_base)^(alpha-1) / m."""
  p = param.get(name, base_width=64, base_depth=2).resolve(256, 8)
  assert p.alpha == alpha and p.depth_mult == 4.0
  assert p.residual_multiplier(8) == pytest.approx(4.0 ** -alpha)
  assert p.lr_scale(pinfo(roles.HIDDEN, 256, 1024, in_block=True), "adam") == pytest.approx(
      0.25 * 4.0 ** (alpha - 1))
  assert p.lr_scale(pinfo(roles.INPUT, 784, 256), "adam") == 1.0
  assert p.forward_multiplier(roles.READOUT, 256, 10) == 0.25  # muP part unchanged
  base = param.get(name, base_width=64, base_depth=2).resolve(64, 2)
  sp = param.SP()
  assert base.residual_multiplier(2) == 1.0
  for role in roles.ALL:
    fi, fo = FANS[role]
    assert base.lr_scale(pinfo(role, fi, fo), "adam") == sp.lr_scale(pinfo(role, fi, fo), "adam")
    assert base.init_std(role, fi, fo) == sp.init_std(role, fi, fo)


def test_depth_of_each_model():
  M = models.MODELS
  assert M["transformer"].depth_of(ml_collections.ConfigDict({"num_layers": 6})) == 6
  assert M["vit"].depth_of({}) == 2
  assert M["resnet"].depth_of(ml_collections.ConfigDict({"blocks_per_stage": 3})) == 9
  assert M["mlp"].depth_of(ml_collections.ConfigDict({"hidden_widths": (8, 8)})) == 2
  assert M["convnext"].depth_of({"depths": (2, 3)}) == 5 and M["longconv"].depth_of({}) == 4


def test_build_resolves_the_parametrization_at_the_models_size():
  model = models.build({"name": "resnet", "width": 32, "blocks_per_stage": 3},
                       parametrization=param.get("mup", base_width=16))
  assert (model.ctx.parametrization.width, model.ctx.parametrization.depth) == (32, 9)
  assert models.build({"name": "resnet"}).ctx.parametrization == param.SP()


def test_depth_mup_lm_at_base_equals_sp_and_scales_branches_when_deeper():
  """Through build_model: the LM under depth_mup at its base size is SP bit for bit; at 4x depth
  its residual branches are halved (alpha = 1/2)."""
  import jax
  from jaxlab.configs import shakespeare_lm
  from jaxlab.data.pipeline import DataSpec
  from jaxlab.train.init import build_model
  spec = DataSpec("lm", vocab_size=256)
  c = shakespeare_lm.get_config()
  c.model.update(d_model=32, num_layers=2, num_heads=2)
  tokens = np.arange(16, dtype=np.int32).reshape(1, 16)
  outs = {}
  for name in ("sp", "depth_mup"):
    c.param.update(name=name, base_width=32, base_depth=2)
    model = build_model(c, spec)
    variables = model.init(jax.random.PRNGKey(0), tokens)
    outs[name] = np.asarray(model.apply(variables, tokens))
  np.testing.assert_array_equal(outs["sp"], outs["depth_mup"])
  c.model.num_layers = 8
  assert build_model(c, spec).ctx.parametrization.residual_multiplier(8) == 0.5


def test_ntk_table_and_sp_at_base_width():
  """NTK relative to the base: hidden/readout keep their base init std (x sqrt(m)) and are
  multiplied by 1/sqrt(m), so W_eff = mult * W has SP's 1/sqrt(fan_in) std; one global LR."""
  p = param.get("ntk", base_width=64).resolve(256)
  sp = param.SP()
  for role in roles.ALL:
    fi, fo = FANS[role]
    grows = role in (roles.HIDDEN, roles.READOUT)
    mult, std = p.forward_multiplier(role, fi, fo), p.init_std(role, fi, fo)
    assert mult == (0.5 if grows else 1.0)
    assert std == pytest.approx(sp.init_std(role, fi, fo) * (2.0 if grows else 1.0))
    assert mult * std == pytest.approx(sp.init_std(role, fi, fo))  # same function at init
    for family in ("adam", "sgd"):
      assert p.lr_scale(pinfo(role, fi, fo), family) == 1.0
  base = param.get("ntk", base_width=64).resolve(64)
  for role in roles.ALL:
    fi, fo = FANS[role]
    assert base.forward_multiplier(role, fi, fo) == 1.0
    assert base.init_std(role, fi, fo) == sp.init_std(role, fi, fo)


def test_per_layer_sp_table():
  """Everett et al. 2024, SP + Adam (full alignment): LR x1 input, x1/m hidden and readout;
  epsilon x1/sqrt(m) upstream of the readout."""
  p = param.get("sp_perlayer", base_width=64).resolve(256)
  expected = {roles.INPUT: (1.0, 0.5), roles.HIDDEN: (0.25, 0.5), roles.READOUT: (0.25, 1.0),
              roles.BIAS: (1.0, 0.5), roles.NORM: (1.0, 0.5)}
  for role, (lr, eps) in expected.items():
    fi, fo = FANS[role]
    assert (p.lr_scale(pinfo(role, fi, fo), "adam"), p.adam_eps_scale(pinfo(role, fi, fo))) == (lr, eps)
    assert p.init_std(role, fi, fo) == param.SP().init_std(role, fi, fo)
  with pytest.raises(UserError, match="Adam-family"):
    p.lr_scale(pinfo(roles.HIDDEN, 256, 256), "sgd")


def test_depth_mup_epsilon_rule():
  """The CompleteP reference scales the one Adam epsilon by (1/m) (L/L_base)^-alpha."""
  p = param.get("depth_mup", base_width=64, base_depth=2).resolve(256, 8)
  for role in roles.ALL:
    for in_block in (False, True):
      assert p.adam_eps_scale(pinfo(role, in_block=in_block)) == pytest.approx(0.25 * 4.0 ** -0.5)


def test_adam_eps_scaling_equals_adam_with_a_per_parameter_epsilon():
  """chain(scale_adam_eps_by_parametrization, adam(eps)) == plain-jnp Adam with eps * s_i."""
  import optax
  p = param.get("depth_mup", base_width=16, base_depth=1).resolve(64, 4)
  model = models.MLP(hidden_widths=(64, 64), num_classes=10, ctx=LayerContext(parametrization=p))
  info = param_info_of(model, np.zeros((1, 8, 8, 1), np.float32))
  eps, lr, b1, b2 = 1e-3, 1e-2, 0.9, 0.999  # a large eps so that it matters
  tx = optax.chain(optim.scale_adam_eps_by_parametrization(p, info),
                   optax.adam(lr, b1=b1, b2=b2, eps=eps))
  params = param.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"])
  state = tx.init(params)
  is_info = lambda x: isinstance(x, param.ParamInfo)  # noqa: E731
  ref_m = jax.tree.map(jnp.zeros_like, params)
  ref_v = jax.tree.map(jnp.zeros_like, params)
  for t in range(1, 4):
    grads = jax.tree.map(lambda x: 1e-3 * jax.random.normal(jax.random.PRNGKey(t), x.shape),
                         params)
    updates, state = tx.update(grads, state, params)
    ref_m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, ref_m, grads)
    ref_v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, ref_v, grads)
    ref = jax.tree.map(
        lambda m, v, i: -lr * (m / (1 - b1**t)) / (
            jnp.sqrt(v / (1 - b2**t)) + eps * p.adam_eps_scale(i)),
        ref_m, ref_v, info, is_leaf=lambda x: is_info(x) or isinstance(x, jax.Array))
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)
  assert optim.scale_adam_eps_by_parametrization(param.SP(), info) is None


def test_a_subclass_with_a_name_registers_itself():
  import dataclasses  # pylint: disable=g-import-not-at-top

  from jaxlab.param.base import REGISTRY, MuP  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True)
  class Halved(MuP):
    name: str = "test_halved"
    factor: float = 0.5

  try:
    assert "test_halved" in param.names() and param.options("test_halved")[-1] == "factor"
    assert param.get("test_halved", base_width=8, factor=0.25) == Halved(base_width=8, factor=0.25)
  finally:
    REGISTRY.pop("test_halved")
  assert "test_halved" not in param.names()
  assert param.get("completep").alpha == 1.0 and param.get("depth_mup").alpha == 0.5
