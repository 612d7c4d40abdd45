"""Models built only from `jaxlab.models.layers` (every parameter carries ParamMeta).

`build(model_cfg, parametrization=..., quant=..., dtype=..., param_dtype=...)` turns a config
{'name': 'mlp'|'resnet'|'vit'|'transformer'|'convnext'|'longconv', **attributes} into a Flax
module whose layers share one LayerContext (jaxlab.models.context); the parametrization is
resolved against the model's width and depth (each model class reports them: jaxlab.models.size).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn

from jaxlab.errors import UserError
from jaxlab.models.attention import Attention
from jaxlab.models.context import LayerContext
from jaxlab.models.layers import (LOGICAL_AXES, Conv, Dense, Embed, FeedForward, PositionEmbedding,
                                  Readout, num_params)
from jaxlab.models.norms import LayerNorm, RMSNorm
from jaxlab.models.convnext import ConvNeXt, ConvNeXtBlock
from jaxlab.models.longconv import LongConvBlock, LongConvLM
from jaxlab.models.mlp import MLP
from jaxlab.models.resnet import BasicBlock, ResNet
from jaxlab.models.rope import apply_rope
from jaxlab.models.transformer import Block, BlockOptions, TransformerLM
from jaxlab.models.vit import ViT
from jaxlab.param.base import SP, Parametrization
from jaxlab.quant.policy import NO_QUANT, QuantPolicy

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP, "resnet": ResNet, "vit": ViT, "transformer": TransformerLM, "convnext": ConvNeXt,
    "longconv": LongConvLM}

# Fields of a model that do not come from the model config (block_options: from its flat keys).
_NOT_CONFIG = ("parent", "name", "ctx", "block_options")
_BLOCK_KEYS = tuple(f.name for f in dataclasses.fields(BlockOptions))


def _has_block_options(cls: type[nn.Module]) -> bool:
  return any(f.name == "block_options" for f in dataclasses.fields(cls))


def config_keys(cls: type[nn.Module]) -> tuple[str, ...]:
  """Attributes of a model class that a config may set (BlockOptions' fields as flat keys)."""
  own = tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_CONFIG)
  return own + (_BLOCK_KEYS if _has_block_options(cls) else ())


def _required_keys(cls: type[nn.Module]) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in _NOT_CONFIG
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def build(model_cfg: Mapping[str, Any], *, parametrization: Parametrization | None = None,
          quant: QuantPolicy | None = None, dtype: Any = "float32",
          param_dtype: Any = "float32") -> nn.Module:
  """Model from an ml_collections ConfigDict (or mapping): `name` picks the class, the remaining
  keys are its attributes (lists become tuples; BlockOptions' keys go into block_options). The
  layer context holds `parametrization` resolved at the model's width and depth (None: SP),
  `quant` (None: no quantization) and the compute / param dtypes."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  if "name" not in cfg:
    raise UserError(f"config.model.name is missing; valid: {', '.join(sorted(MODELS))}")
  kind = cfg.pop("name")
  if kind not in MODELS:
    raise UserError(f"unknown model {kind!r} (config.model.name); valid: "
                    f"{', '.join(sorted(MODELS))}")
  if "dtype" in cfg:
    raise UserError("config.model.dtype is now config.dtype (compute dtype; config.param_dtype "
                    "for the weights): set that instead")
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
  if _has_block_options(cls):
    kwargs["block_options"] = BlockOptions(
        **{k: kwargs.pop(k) for k in _BLOCK_KEYS if k in kwargs})
  p = SP() if parametrization is None else parametrization.resolve(cls.width_of(kwargs),
                                                                    cls.depth_of(kwargs))
  ctx = LayerContext(p, quant or NO_QUANT, dtype, param_dtype)
  return cls(**kwargs, ctx=ctx)


__all__ = [
    "LOGICAL_AXES", "MODELS", "Attention", "BasicBlock", "Block", "BlockOptions", "Conv",
    "ConvNeXt", "ConvNeXtBlock", "Dense", "Embed", "FeedForward", "LayerContext", "LayerNorm",
    "LongConvBlock", "LongConvLM", "MLP", "PositionEmbedding", "RMSNorm", "Readout", "ResNet",
    "TransformerLM", "ViT", "apply_rope", "build", "config_keys", "num_params"]
