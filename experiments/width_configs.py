"""A train config rewritten for another width and parametrization (shared by the width sweeps)."""

import ml_collections

from jaxlab import models


def config_at(config: ml_collections.ConfigDict, parametrization: str, width: int, *,
              base_width: int, zero_readout: bool = False) -> ml_collections.ConfigDict:
  """Copy of `config` whose model has the given width (every hidden width for the MLP)."""
  c = ml_collections.ConfigDict(config.to_dict())
  key = models.WIDTH_KEYS[c.model.name]
  c.model[key] = (width,) * len(c.model[key]) if c.model.name == "mlp" else width
  c.parametrization, c.base_width = parametrization, base_width
  c.zero_readout = zero_readout and parametrization == "mup"
  return c
