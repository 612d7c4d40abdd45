"""Per-parameter metadata: role, fan-in, fan-out and logical axis names.

`ParamMeta` is a Flax `LogicallyPartitioned` box, so the same metadata drives both the
parametrization (role, fans) and sharding (logical axis names -> mesh axes).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import struct


@struct.dataclass
class ParamMeta(nn.LogicallyPartitioned):
  role: str = struct.field(pytree_node=False, default="hidden")
  fan_in: int = struct.field(pytree_node=False, default=0)
  fan_out: int = struct.field(pytree_node=False, default=0)


class ParamInfo(NamedTuple):
  """What a parametrization needs to know about one parameter."""

  role: str
  fan_in: int
  fan_out: int
  names: tuple


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def param_info(boxed_params: Any) -> Any:
  """Tree of `ParamInfo` with the structure of the unboxed params.

  Raises ValueError naming the parameter when one was created without `ParamMeta`.
  """

  def info(path, leaf):
    if not isinstance(leaf, ParamMeta):
      raise ValueError(
          f"parameter {jax.tree_util.keystr(path)} has no ParamMeta (role/fan-in/fan-out);"
          " create every parameter through jaxlab.models.layers")
    return ParamInfo(leaf.role, leaf.fan_in, leaf.fan_out, tuple(leaf.names))

  return jax.tree_util.tree_map_with_path(info, boxed_params, is_leaf=_is_box)


def unbox(boxed_params: Any) -> Any:
  """The raw arrays, without metadata boxes."""
  return nn.meta.unbox(boxed_params)
