"""A train config rewritten for another width or depth and parametrization (shared by the width
and depth sweeps)."""

import ml_collections

from jaxlab import models

DEPTH_KEYS = {"transformer": "num_layers", "vit": "depth", "resnet": "blocks_per_stage"}


def config_at(config: ml_collections.ConfigDict, parametrization: str, width: int, *,
              base_width: int, zero_readout: bool = False) -> ml_collections.ConfigDict:
  """Copy of `config` whose model has the given width (every hidden width for the MLP)."""
  c = ml_collections.ConfigDict(config.to_dict())
  key = models.WIDTH_KEYS[c.model.name]
  c.model[key] = (width,) * len(c.model[key]) if c.model.name == "mlp" else width
  c.parametrization, c.base_width = parametrization, base_width
  c.zero_readout = zero_readout and parametrization == "mup"
  return c


def config_at_depth(config: ml_collections.ConfigDict, parametrization: str, depth: int, *,
                    base_width: int, base_depth: int,
                    zero_readout: bool = False) -> ml_collections.ConfigDict:
  """Copy of `config` whose model has `depth` residual blocks (transformer layers, ViT depth,
  ResNet blocks per stage) at the config's width."""
  c = ml_collections.ConfigDict(config.to_dict())
  if c.model.name not in DEPTH_KEYS:
    raise ValueError(f"depth sweeps need a residual model ({', '.join(DEPTH_KEYS)}); "
                     f"config.model.name={c.model.name!r}")
  c.model[DEPTH_KEYS[c.model.name]] = depth
  c.parametrization, c.base_width, c.base_depth = parametrization, base_width, base_depth
  c.zero_readout = zero_readout and parametrization in ("mup", "depth_mup", "completep")
  return c
