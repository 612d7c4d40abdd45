"""Parameter partition rules: logical axis names (recorded in ParamMeta) -> mesh axes.

A rule maps a logical name to a mesh axis; a dimension is sharded only when its size divides
evenly over that axis and the axis is not already used by another dimension of the same
parameter, otherwise it is replicated. With the default rules every parameter is split over
'fsdp' along its model-width ('embed') dimension (ZeRO-3 / FSDP style) and replicated over 'data'.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.param.meta import ParamMeta

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("vocab", "fsdp"),
    ("conv_out", "fsdp"),
)


def partition_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> P:
  rule = dict(rules)
  used, spec = set(), []
  for name, size in zip(names, shape):
    axis = rule.get(name) if name is not None else None
    if axis is not None and axis not in used and size % mesh.shape[axis] == 0 and mesh.shape[axis] > 1:
      spec.append(axis)
      used.add(axis)
    else:
      spec.append(None)
  return P(*spec)


def param_shardings(boxed_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> Any:
  """NamedSharding per parameter from the ParamMeta boxes (concrete or abstract values)."""

  def one(box):
    if not isinstance(box, ParamMeta):
      raise ValueError(f"parameter without ParamMeta: {box!r}")
    return NamedSharding(mesh, partition_spec(box.names, box.value.shape, mesh, rules))

  return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
