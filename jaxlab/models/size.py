"""Model classes that report their width and depth: what a parametrization's width and depth
multipliers refer to, and which config keys a width or depth sweep sets."""

import dataclasses
from typing import Any, Mapping


class Sized:
  """Mixin of the model classes, answering from config attributes (class defaults fill the rest).

  WIDTH_KEY: the attribute setting the width (a tuple's first entry: first hidden layer, first
  stage); DEPTH_KEY: the one setting the number of residual blocks, times DEPTH_FACTOR (a tuple
  counts its sum); DEPTH_KEY None: no residual blocks (no depth sweeps).
  """

  WIDTH_KEY = ""
  DEPTH_KEY: str | None = None
  DEPTH_FACTOR = 1

  @classmethod
  def attribute(cls, attrs: Mapping[str, Any], key: str) -> Any:
    if key in attrs:
      return attrs[key]
    return {f.name: f.default for f in dataclasses.fields(cls)}[key]

  @classmethod
  def width_of(cls, attrs: Mapping[str, Any]) -> int:
    value = cls.attribute(attrs, cls.WIDTH_KEY)
    return int(value[0] if isinstance(value, (tuple, list)) else value)

  @classmethod
  def depth_of(cls, attrs: Mapping[str, Any]) -> int:
    if cls.DEPTH_KEY is None:
      return 0
    value = cls.attribute(attrs, cls.DEPTH_KEY)
    return cls.DEPTH_FACTOR * int(sum(value) if isinstance(value, (tuple, list)) else value)

  @classmethod
  def with_width(cls, attrs: Mapping[str, Any], width: int) -> dict[str, Any]:
    """{key: value} setting the width (every entry of a tuple)."""
    value = cls.attribute(attrs, cls.WIDTH_KEY)
    return {cls.WIDTH_KEY: (width,) * len(value) if isinstance(value, (tuple, list)) else width}

  @classmethod
  def with_depth(cls, attrs: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """{key: value} setting DEPTH_KEY to `depth` (every stage of a tuple); ValueError for a model
    without residual blocks."""
    if cls.DEPTH_KEY is None:
      raise ValueError(f"{cls.__name__} has no residual blocks to sweep the depth of")
    value = cls.attribute(attrs, cls.DEPTH_KEY)
    return {cls.DEPTH_KEY: (depth,) * len(value) if isinstance(value, (tuple, list)) else depth}
