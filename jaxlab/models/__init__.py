"""Models built only from `jaxlab.models.layers` (every parameter carries ParamMeta).

`build(model_cfg)` turns a config {'name': 'mlp'|'resnet'|'vit'|'transformer'|'convnext'|
'longconv', **attributes} into a Flax module; parametrization and quantization policy are passed
separately.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxlab.errors import UserError
from jaxlab.models.attention import Attention
from jaxlab.models.layers import (LOGICAL_AXES, Conv, Dense, Embed, FeedForward, PositionEmbedding,
                                  Readout, num_params)
from jaxlab.models.norms import LayerNorm, RMSNorm
from jaxlab.models.convnext import ConvNeXt, ConvNeXtBlock
from jaxlab.models.longconv import LongConvBlock, LongConvLM
from jaxlab.models.mlp import MLP
from jaxlab.models.resnet import BasicBlock, ResNet
from jaxlab.models.rope import apply_rope
from jaxlab.models.transformer import Block, TransformerLM
from jaxlab.models.vit import ViT
from jaxlab.param.base import SP, Parametrization
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP, "resnet": ResNet, "vit": ViT, "transformer": TransformerLM, "convnext": ConvNeXt,
    "longconv": LongConvLM}

# Fields every module has that do not come from the model config.
_NOT_CONFIG = ("parent", "name", "parametrization", "quant")


def config_keys(cls: type[nn.Module]) -> tuple[str, ...]:
  """Attributes of a model class that a config may set."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_CONFIG)


def _required_keys(cls: type[nn.Module]) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in _NOT_CONFIG
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def build(model_cfg: Mapping[str, Any], *, parametrization: Parametrization | None = None,
          quant: QuantPolicy | None = None) -> nn.Module:
  """Model from an ml_collections ConfigDict (or mapping): `name` picks the class, the remaining
  keys are its attributes; lists become tuples and a string `dtype` becomes a jnp dtype."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  if "name" not in cfg:
    raise UserError(f"config.model.name is missing; valid: {', '.join(sorted(MODELS))}")
  kind = cfg.pop("name")
  if kind not in MODELS:
    raise UserError(f"unknown model {kind!r} (config.model.name); valid: "
                    f"{', '.join(sorted(MODELS))}")
  cls = MODELS[kind]
  valid = config_keys(cls)
  for key in cfg:
    if key not in valid:
      raise UserError(f"unknown key {key!r} (config.model.{key}) for model {kind!r}; valid keys: "
                      f"{', '.join(valid)}")
  missing = [k for k in _required_keys(cls) if k not in cfg]
  if missing:
    raise UserError(f"model {kind!r} needs keys {missing} (config.model.<key>); valid keys: "
                    f"{', '.join(valid)}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return cls(**kwargs, parametrization=parametrization or SP(), quant=quant or NO_QUANT)


__all__ = [
    "LOGICAL_AXES", "MODELS", "Attention", "BasicBlock", "Block", "Conv", "ConvNeXt",
    "ConvNeXtBlock", "Dense", "Embed", "FeedForward", "LayerNorm", "LongConvBlock", "LongConvLM",
    "MLP", "PositionEmbedding", "RMSNorm", "Readout", "ResNet", "TransformerLM", "ViT",
    "apply_rope", "build", "config_keys", "num_params"]


WIDTH_KEYS = {"mlp": "hidden_widths", "resnet": "width", "vit": "dim", "transformer": "d_model",
              "convnext": "widths", "longconv": "d_model"}


def width_of(model_cfg: Mapping[str, Any]) -> int:
  """The width a parametrization's width multiplier refers to: d_model (transformer, longconv),
  dim (ViT), width (ResNet; stages are 1x/2x/4x of it), the first hidden width (MLP), the first
  stage's width (ConvNeXt)."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  kind = cfg.get("name")
  if kind not in WIDTH_KEYS:
    raise UserError(f"unknown model {kind!r} (config.model.name); valid: "
                    f"{', '.join(sorted(WIDTH_KEYS))}")
  cls_default = {f.name: f.default for f in dataclasses.fields(MODELS[kind])}
  value = cfg.get(WIDTH_KEYS[kind], cls_default.get(WIDTH_KEYS[kind]))
  return int(value[0] if isinstance(value, (tuple, list)) else value)


def depth_of(model_cfg: Mapping[str, Any]) -> int:
  """Number of residual blocks (depth-muP's L): num_layers (transformer, longconv), depth (ViT),
  3 * blocks_per_stage (ResNet), sum(depths) (ConvNeXt); number of hidden layers for the MLP (no
  residual branches)."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  kind = cfg.get("name")
  if kind not in MODELS:
    raise UserError(f"unknown model {kind!r} (config.model.name); valid: "
                    f"{', '.join(sorted(MODELS))}")
  defaults = {f.name: f.default for f in dataclasses.fields(MODELS[kind])}
  get = lambda key: cfg.get(key, defaults.get(key))
  if kind in ("transformer", "longconv"):
    return int(get("num_layers"))
  if kind == "convnext":
    return int(sum(get("depths")))
  if kind == "vit":
    return int(get("depth"))
  if kind == "resnet":
    return 3 * int(get("blocks_per_stage"))
  return len(get("hidden_widths"))
