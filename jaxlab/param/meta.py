"""Per-parameter metadata: role, fan-in, fan-out and logical axis names.

`ParamMeta` is a Flax `LogicallyPartitioned` box, so the same metadata drives both the
parametrization (role, fans) and sharding (logical axis names -> mesh axes). `param_info` adds
what only the parameter's place in the model tells: whether it sits in one of the L repeated
residual blocks (a module named `block_<i>` or `<prefix>_block_<i>`, the convention every jaxlab
model with a depth follows), which the depth rules of depth-muP, CompleteP and u-muP need.
"""

import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import struct


@struct.dataclass
class ParamMeta(nn.LogicallyPartitioned):
  role: str = struct.field(pytree_node=False, default="hidden")
  fan_in: int = struct.field(pytree_node=False, default=0)
  fan_out: int = struct.field(pytree_node=False, default=0)


BLOCK_NAME = re.compile(r"(^|_)block_\d+$")
"""Module names of the residual blocks whose count is the model's depth L."""

WIDTH_AXES = ("embed", "mlp", "heads", "conv_out")
"""Logical axes whose size grows with the model's width (jaxlab.models.layers.LOGICAL_AXES);
the others (vocab, classes, position, kernel taps, raw inputs) keep their size; conv_in is left
out because a stem conv's input channels are the image's (a hidden conv has conv_out too)."""


class ParamInfo(NamedTuple):
  """What a parametrization needs to know about one parameter: its role, fans, logical axis
  names and whether it sits inside a residual block (`BLOCK_NAME`)."""

  role: str
  fan_in: int
  fan_out: int
  names: tuple = ()
  in_block: bool = False

  @property
  def width_sized(self) -> bool:
    """Whether some axis grows with width (microsoft/mup's 'ninf >= 1'). False for the readout
    bias (classes / vocab) and scalar gains and biases, which mup treats as fixed-size."""
    return any(n in WIDTH_AXES for n in self.names)


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
    in_block = any(BLOCK_NAME.search(str(getattr(k, "key", k))) for k in path)
    return ParamInfo(leaf.role, leaf.fan_in, leaf.fan_out, tuple(leaf.names), in_block)

  return jax.tree_util.tree_map_with_path(info, boxed_params, is_leaf=_is_box)


def unbox(boxed_params: Any) -> Any:
  """The raw arrays, without metadata boxes."""
  return nn.meta.unbox(boxed_params)
