"""Parameter partition rules: logical axis names (recorded in ParamMeta) -> mesh axes.

A rule maps a logical name to a mesh axis; a name may have several rules, tried in order (the
first usable one wins). A dimension is sharded only when its size divides evenly over that axis,
the axis has more than one device and it is not already used by another dimension of the same
parameter, otherwise it is replicated. With the default rules every parameter is split over
'fsdp' along its model-width ('embed') dimension (ZeRO-3 / FSDP style) and replicated over
'data'; attention heads and the MLP hidden width are split over 'model' (Megatron-LM tensor
parallelism, Shoeybi et al. 2019, Sec. 3: column-parallel qkv / MLP-in, row-parallel out /
MLP-out), falling back to 'fsdp' where there is no 'model' axis to use.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.param.meta import ParamMeta

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("mlp", "fsdp"),
    ("heads", "model"),
    ("heads", "fsdp"),
    ("vocab", "fsdp"),
    ("conv_out", "fsdp"),
)


def partition_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> P:
  used, spec = set(), []
  for name, size in zip(names, shape):
    axes = [a for n, a in rules if n == name and name is not None and a is not None]
    usable = [a for a in axes if a not in used and mesh.shape.get(a, 1) > 1
              and size % mesh.shape[a] == 0]
    spec.append(usable[0] if usable else None)
    used.update(usable[:1])
  return P(*spec)


def param_shardings(boxed_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> Any:
  """NamedSharding per parameter from the ParamMeta boxes (concrete or abstract values)."""

  def one(box):
    if not isinstance(box, ParamMeta):
      raise ValueError(f"parameter without ParamMeta: {box!r}")
    return NamedSharding(mesh, partition_spec(box.names, box.value.shape, mesh, rules))

  return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
