"""Parametrizations by name: `jaxlab.param.get(**config.param)`, e.g. `get("mup", base_width=64)`.

A parametrization's options are its dataclass fields (less name, width and depth, which
`resolve` fills in); nothing else lists which parametrization takes which option."""

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


def _check_name(name: str) -> None:
  if name not in _REGISTRY:
    raise UserError(f"unknown parametrization config.param.name={name!r}; valid: "
                    f"{', '.join(NAMES)}")


def options(name: str) -> tuple[str, ...]:
  """The options (keys of config.param besides name) that parametrization `name` takes."""
  _check_name(name)
  cls = _REGISTRY[name]
  fields = dataclasses.fields(cls.func if isinstance(cls, functools.partial) else cls)
  return tuple(f.name for f in fields if f.name not in ("name", "width", "depth"))


def get(name: str, base_width: int = 0, base_depth: int = 0, **opts) -> Parametrization:
  """The parametrization a `config.param` block describes: `get(**config.param)`. An unknown
  name, or an option it does not take, is a UserError naming `config.param.<key>`."""
  valid = options(name)
  for key in opts:
    if key not in valid:
      raise UserError(f"config.param.{key}: parametrization {name!r} takes no option {key!r};"
                      f" its options: {', '.join(valid)}")
  return _REGISTRY[name](base_width=int(base_width), base_depth=int(base_depth), **opts)
