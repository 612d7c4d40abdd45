"""Every parameter of the MLP, the Transformer LM, the ResNet and the ViT, at the base shape and at
8x width / 4x depth, under SP, muP, depth-muP, CompleteP and u-muP, against the reference table
(tests/param/reference_table.py, which cites the source of each rule).

The optimizer columns are measured through the product's own optimizer chain
(jaxlab.train.init.make_tx) by probing one step: Adam LR with unit gradients, epsilon with
gradients equal to it, weight decay with zero gradients, SGD LR with unit gradients. Init stds
are measured on the initialised parameters.
"""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab import models, param
from jaxlab.configs import common
from jaxlab.data.pipeline import DataSpec
from jaxlab.train.init import build_model, dummy_input, make_tx
from tests.param.reference_table import Param, expected

IMAGE = DataSpec("classification", num_classes=10, input_shape=(28, 28, 1))
LM = DataSpec("lm", vocab_size=256)

# model: (data spec, base model config, the same at 8x width and 4x depth, base depth L_base)
MODELS = {
    "mlp": (IMAGE, {"name": "mlp", "hidden_widths": (32, 32)},
            {"name": "mlp", "hidden_widths": (256,) * 8}, 0),
    "transformer": (LM, {"name": "transformer", "d_model": 32, "num_layers": 2, "num_heads": 2,
                         "positional": "rope", "tie_embeddings": False},
                    {"name": "transformer", "d_model": 256, "num_layers": 8, "num_heads": 2,
                     "positional": "rope", "tie_embeddings": False}, 2),
    "resnet": (IMAGE, {"name": "resnet", "width": 4, "blocks_per_stage": 1},
               {"name": "resnet", "width": 32, "blocks_per_stage": 4}, 3),
    "vit": (IMAGE, {"name": "vit", "patch_size": 7, "dim": 16, "depth": 2, "num_heads": 2,
                    "pool": "cls"},
            {"name": "vit", "patch_size": 7, "dim": 128, "depth": 8, "num_heads": 2,
             "pool": "cls"}, 2),
}
PARAMETRIZATIONS = [("sp", {}), ("mup", {}), ("depth_mup", {}), ("completep", {}), ("umup", {}),
                    ("umup", {"embedding_lr": "unit_scaling"})]


def _config(model_cfg: dict, name: str, opts: dict, model: str, optim: str, eps: float,
            wd: float) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.model = ml_collections.ConfigDict(model_cfg)
  base_cfg = MODELS[model][1]
  base_width = models.MODELS[base_cfg["name"]].width_of(base_cfg)
  c.param = ml_collections.ConfigDict({"name": name, "base_width": base_width,
                                       "base_depth": MODELS[model][3], **opts})
  c.optim.update(name=optim, learning_rate=1.0, schedule="constant", warmup_steps=0,
                 grad_clip=0.0, eps=eps, weight_decay=wd, b1=0.9, b2=0.999)
  c.optim.momentum = 0.0
  c.num_steps = 10
  return c


def _is_info(x) -> bool:
  return isinstance(x, param.ParamInfo)


def _paths(tree, is_leaf=None) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def _probe(c, model, info, params_ones, grad_value: float) -> dict:
  """The first update of every parameter, from params = 1 and gradients = grad_value."""
  tx = make_tx(c, model, info)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params_ones)
  updates, _ = tx.update(grads, tx.init(params_ones), params_ones)
  return {k: float(np.mean(np.asarray(v))) for k, v in _paths(updates).items()}


def _base_shapes(model: str, spec, example) -> dict:
  c = _config(MODELS[model][1], "sp", {}, model, "adamw", 1e-8, 0.0)
  boxed = jax.eval_shape(build_model(c, spec).init, jax.random.PRNGKey(0), example)["params"]
  return {k: v.shape for k, v in _paths(param.unbox(boxed)).items()}


def _base_path(path: str, base: dict) -> str:
  """The base model's counterpart of a parameter of the deeper model: block / layer indices
  beyond the base depth map to the base's last block of the same kind."""
  if path in base:
    return path
  for candidate in (re.sub(r"block_\d+", "block_0", path), re.sub(r"dense_\d+", "dense_1", path)):
    if candidate in base:
      return candidate
  raise KeyError(f"{path}: no counterpart in the base model")


def _measured(model: str, name: str, opts: dict, scaled: bool) -> dict:
  spec, base_cfg, wide_cfg, _ = MODELS[model]
  model_cfg = wide_cfg if scaled else base_cfg
  example = dummy_input(spec, 16)
  c = _config(model_cfg, name, opts, model, "adamw", 1e-8, 0.0)
  net = build_model(c, spec)
  boxed = net.init(jax.random.PRNGKey(0), example)["params"]
  info, params = param.param_info(boxed), param.unbox(boxed)
  ones = jax.tree.map(jnp.ones_like, params)
  rows = {k: {"value": np.asarray(v)} for k, v in _paths(params).items()}
  p = net.ctx.parametrization
  for key, i in _paths(info, is_leaf=_is_info).items():
    if key.endswith("kernel"):
      rows[key]["forward"] = p.op_scales(i.role, i.fan_in, i.fan_out, 1).out
    elif key.endswith("embedding"):
      rows[key]["forward"] = p.lookup_scales(i.fan_in, i.fan_out, 1).out
  adam = _probe(c, net, info, ones, 1.0)
  eps = _probe(_config(model_cfg, name, opts, model, "adamw", 1.0, 0.0), net, info, ones, 1.0)
  decay = _probe(_config(model_cfg, name, opts, model, "adamw", 1e-8, 0.5), net, info, ones,
                 0.0)
  for k, r in rows.items():
    r["adam_lr"] = -adam[k]
    r["adam_eps"] = (-adam[k] / -eps[k] - 1.0)  # -u = s / (1 + eps * e) with g = eps = 1
    r["wd"] = -decay[k] / 0.5
  if name != "umup":
    sgd = _probe(_config(model_cfg, name, opts, model, "sgd", 1e-8, 0.0), net, info, ones, 1.0)
    for k, r in rows.items():
      r["sgd_lr"] = -sgd[k]
  return rows, p


@pytest.mark.parametrize("scaled", [False, True], ids=["base", "8x_width_4x_depth"])
@pytest.mark.parametrize("name,opts", PARAMETRIZATIONS,
                         ids=[n + ("_" + "_".join(o.values()) if o else "")
                              for n, o in PARAMETRIZATIONS])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_parameter_matches_the_reference_table(model, name, opts, scaled):
  spec = MODELS[model][0]
  base = _base_shapes(model, spec, dummy_input(spec, 16))
  rows, p = _measured(model, name, opts, scaled)
  m = p.width_mult if name != "umup" else 8.0 if scaled else 1.0
  depth_mult = p.depth_mult
  problems = []
  for path, r in sorted(rows.items()):
    value = r["value"]
    base_shape = base[_base_path(path, base)]
    ninf = sum(a > b for a, b in zip(value.shape, base_shape))
    ref = Param(path, value.shape, ninf, math.prod(base_shape[:-1]) if len(base_shape) > 1 else 1)
    row = expected(name, ref, m=m, depth_mult=depth_mult, depth=p.depth, opts=opts)
    got = {"adam_lr": r["adam_lr"], "wd": r["wd"], "adam_eps": r["adam_eps"]}
    want = {"adam_lr": row.adam_lr, "wd": row.wd, "adam_eps": row.adam_eps}
    if row.sgd_lr is not None:
      got["sgd_lr"], want["sgd_lr"] = r["sgd_lr"], row.sgd_lr
    if row.forward is not None:
      got["forward"], want["forward"] = r["forward"], row.forward
    for key in want:
      # epsilon is read off s / (1 + e) in float32: ~1e-7 relative error on 1 + e
      atol = 1e-6 if key == "adam_eps" else 1e-7
      if not math.isclose(got[key], want[key], rel_tol=1e-5, abs_tol=atol):
        problems.append(f"{path} {key}: jaxlab {got[key]:.6g}, reference {want[key]:.6g}")
    if row.init_std is not None and value.size >= 64:
      rms = float(np.sqrt(np.mean(value.astype(np.float64) ** 2)))
      tol = 5.0 / math.sqrt(2 * value.size)  # sampling error of an rms estimate
      if abs(rms / row.init_std - 1.0) > tol:
        problems.append(f"{path} init std: jaxlab {rms:.4g}, reference {row.init_std:.4g}")
    elif row.init_std is None:
      init = 0.0 if ref.leaf == "bias" else 1.0
      if not np.all(value == init):
        problems.append(f"{path}: init not all {init}")
  assert not problems, f"{model} {name} {opts}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name,alpha", [("sp", 0.0), ("mup", 0.0), ("depth_mup", 0.5),
                                        ("completep", 1.0)])
def test_residual_branch_multiplier_matches_the_references(name, alpha):
  """CompleteP reference: x + (L/L_base)^-alpha * branch(x) (alpha = depth_alpha_exp)."""
  for model in ("transformer", "resnet", "vit"):
    spec, _, wide, base_depth = MODELS[model]
    c = _config(wide, name, {}, model, "adamw", 1e-8, 0.0)
    p = build_model(c, spec).ctx.parametrization
    assert p.residual_multiplier(p.depth) == pytest.approx(4.0 ** -alpha), model
