"""Parametrizations by name: `jaxlab.param.get("mup", base_width=64)`."""

import dataclasses
import functools

from jaxlab.errors import UserError
from jaxlab.param.base import NTK, SP, DepthMuP, MuP, Parametrization, PerLayerSP
from jaxlab.param.umup import UMuP

_REGISTRY = {
    "sp": SP, "ntk": NTK, "sp_perlayer": PerLayerSP, "mup": MuP, "depth_mup": DepthMuP,
    "completep": functools.partial(DepthMuP, name="completep", alpha=1.0), "umup": UMuP,
}
NAMES = tuple(sorted(_REGISTRY))


def get(name: str, **kwargs) -> Parametrization:
  """`get("mup", base_width=64)`, `get("depth_mup", base_width=64, base_depth=2)`, `get("umup")`;
  an unknown name or option is a UserError listing the valid ones."""
  if name not in _REGISTRY:
    raise UserError(f"unknown parametrization {name!r} (config.parametrization); valid: "
                    f"{', '.join(NAMES)}")
  cls = _REGISTRY[name]
  fields = dataclasses.fields(cls.func if isinstance(cls, functools.partial) else cls)
  valid = {f.name for f in fields} - {"name", "width", "depth"}
  unknown = set(kwargs) - valid
  if unknown:
    raise UserError(f"parametrization {name!r} has no option(s) {sorted(unknown)} (config.<option>"
                    f" with config.parametrization={name!r}); valid: {sorted(valid)}")
  return cls(**kwargs)
