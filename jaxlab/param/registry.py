"""Parametrizations by name: `jaxlab.param.get(**config.param)`, e.g. `get("mup", base_width=64)`.

A parametrization's options are its dataclass fields (less name, width and depth, which
`resolve` fills in); nothing else lists which parametrization takes which option."""

import dataclasses

from jaxlab.errors import UserError
from jaxlab.param import umup  # noqa: F401  (defining UMuP registers it)
from jaxlab.param.base import REGISTRY, Parametrization


def names() -> tuple[str, ...]:
  """The registered parametrization names (a subclass defined later, e.g. in a notebook, too)."""
  return tuple(sorted(REGISTRY))


def _check_name(name: str) -> None:
  if name not in REGISTRY:
    raise UserError(f"unknown parametrization config.param.name={name!r}; valid: "
                    f"{', '.join(names())}")


def options(name: str) -> tuple[str, ...]:
  """The options (keys of config.param besides name) that parametrization `name` takes."""
  _check_name(name)
  return tuple(f.name for f in dataclasses.fields(REGISTRY[name])
               if f.name not in ("name", "width", "depth"))


def get(name: str, base_width: int = 0, base_depth: int = 0, **opts) -> Parametrization:
  """The parametrization a `config.param` block describes: `get(**config.param)`. An unknown
  name, or an option it does not take, is a UserError naming `config.param.<key>`."""
  valid = options(name)
  for key in opts:
    if key not in valid:
      raise UserError(f"config.param.{key}: parametrization {name!r} takes no option {key!r};"
                      f" its options: {', '.join(valid)}")
  return REGISTRY[name](base_width=int(base_width), base_depth=int(base_depth), **opts)


def describe(p: Parametrization) -> dict:
  """Every field of a (resolved) parametrization, name and options included (e.g. mup's
  wd_convention), as the plain dict each results JSON records."""
  return dataclasses.asdict(p)
