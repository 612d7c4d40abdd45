"""A train config rewritten for another width or depth and parametrization (shared by the width
and depth sweeps); which keys set a model's width and depth, its class says (models.size)."""

import ml_collections

from jaxlab import models, param


def _model_class(c: ml_collections.ConfigDict):
  if c.model.name not in models.MODELS:
    raise ValueError(f"unknown model {c.model.name!r} (config.model.name); valid: "
                     f"{', '.join(sorted(models.MODELS))}")
  return models.MODELS[c.model.name]


def _param_block(name: str, *, base_width: int, base_depth: int,
                 zero_readout: bool) -> ml_collections.ConfigDict:
  """config.param for parametrization `name`; zero_readout applies where `name` takes it."""
  block = {"name": name, "base_width": base_width, "base_depth": base_depth}
  if zero_readout and "zero_readout" in param.options(name):
    block["zero_readout"] = True
  return ml_collections.ConfigDict(block)


def config_at(config: ml_collections.ConfigDict, parametrization: str, width: int, *,
              base_width: int, zero_readout: bool = False) -> ml_collections.ConfigDict:
  """Copy of `config` whose model has the given width (every hidden width for the MLP)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.update(_model_class(c).with_width(c.model, width))
  c.param = _param_block(parametrization, base_width=base_width,
                         base_depth=c.param.base_depth, zero_readout=zero_readout)
  return c


def config_at_depth(config: ml_collections.ConfigDict, parametrization: str, depth: int, *,
                    base_width: int, base_depth: int,
                    zero_readout: bool = False) -> ml_collections.ConfigDict:
  """Copy of `config` whose model has `depth` as its depth key (transformer / long-conv layers,
  ViT depth, ResNet blocks per stage, ConvNeXt blocks in every stage) at the config's width."""
  c = ml_collections.ConfigDict(config.to_dict())
  cls = _model_class(c)
  if cls.DEPTH_KEY is None:
    residual = [k for k, m in models.MODELS.items() if m.DEPTH_KEY is not None]
    raise ValueError(f"depth sweeps need a residual model ({', '.join(residual)}); "
                     f"config.model.name={c.model.name!r}")
  c.model.update(cls.with_depth(c.model, depth))
  c.param = _param_block(parametrization, base_width=base_width, base_depth=base_depth,
                         zero_readout=zero_readout)
  return c
