"""No module in jaxlab.models declares a field it does not use (issue: 'a layer never declares a
field it does not use'): every constructor field of every module with a __call__ is read in its
source as `self.<field>`, or handed on whole by `_fields_of(<Class>, self)` to a module that
declares it. A static check on the source text; a field added for uniformity fails it."""

import dataclasses
import importlib
import inspect
import pkgutil
import re

import flax.linen as nn
import pytest

import jaxlab.models

MODULES = [importlib.import_module(f"jaxlab.models.{m.name}")
           for m in pkgutil.iter_modules(jaxlab.models.__path__)]
CLASSES = sorted({cls for mod in MODULES for cls in vars(mod).values()
                  if inspect.isclass(cls) and issubclass(cls, nn.Module)
                  and cls.__module__ == mod.__name__ and "__call__" in vars(cls)},
                 key=lambda c: (c.__module__, c.__name__))


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}


def _unused(cls) -> list[str]:
  own_bases = [cls] + [c for c in cls.__mro__[1:] if c.__module__.startswith("jaxlab.")]
  source = "".join(inspect.getsource(c) for c in own_bases)
  forwarded = set()
  for target in re.findall(r"_fields_of\((\w+), self\)", source):
    forwarded |= _fields(getattr(inspect.getmodule(cls), target))
  return sorted(f for f in _fields(cls) - forwarded
                if not re.search(rf"self\.{f}\b", source))


def test_every_module_is_checked():
  names = {c.__name__ for c in CLASSES}
  assert {"Dense", "MLP", "TransformerLM", "ViT", "ResNet", "ConvNeXt", "LongConvLM",
          "DepthwiseConv", "LayerNorm"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_module_uses_every_field(cls):
  assert _unused(cls) == []


def test_the_check_finds_an_unused_field():
  class Padded(nn.Module):  # noqa: D401  (defined here, so inspect can read its source)
    width: int = 4
    quant: str = "unused"

    def __call__(self, x):
      return x * self.width

  assert _unused(Padded) == ["quant"]
