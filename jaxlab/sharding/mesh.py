"""Device meshes with a data-parallel, a fully-sharded (FSDP) and a tensor-parallel axis.

The 'model' axis is Megatron-LM's tensor parallelism (Shoeybi et al. 2019): the partition rules
split attention heads and the MLP's hidden width over it (jaxlab.sharding.rules) and the batch is
replicated over it, so only (data, fsdp) split the batch.
"""

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.errors import UserError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over these, replicated over 'model'


def _get(cfg: Any, axis: str) -> int:
  """config.mesh.<axis>; 'model' defaults to 1 (configs and callers from before it existed)."""
  default = 1 if axis == "model" else None
  value = cfg.get(axis, default) if hasattr(cfg, "get") else getattr(cfg, axis, default)
  if value is None:
    raise UserError(f"config.mesh.{axis} is missing; valid: a positive integer or -1")
  return int(value)


def mesh_shape(cfg: Any, num_devices: int) -> dict[str, int]:
  """{axis: size} from config.mesh (data, fsdp, model); -1 on one axis = the remaining devices.
  UserError naming config.mesh.* when the sizes do not tile `num_devices`."""
  sizes = {a: _get(cfg, a) for a in AXES}
  given = ", ".join(f"{a}={v}" for a, v in sizes.items())
  fill = [a for a, v in sizes.items() if v == -1]
  if len(fill) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
    raise UserError(f"config.mesh ({given}): valid sizes are positive integers, with -1 (= the"
                    " remaining devices) on one axis at most")
  if fill:
    rest = math.prod(v for v in sizes.values() if v != -1)
    sizes[fill[0]] = num_devices // rest if num_devices % rest == 0 else 0
  if math.prod(sizes.values()) != num_devices:
    raise UserError(
        f"config.mesh ({given}) does not tile the {num_devices} available devices; valid:"
        f" data * fsdp * model = {num_devices} (config.mesh.data, .fsdp, .model), or -1 on one"
        f" axis with the product of the other two dividing {num_devices} (e.g."
        f" --config.mesh.data=-1 --config.mesh.model=2)")
  return sizes


def make_mesh(cfg: Any, devices=None) -> Mesh:
  """Mesh of shape (data, fsdp, model) from config.mesh (`mesh_shape`). 'model' is the minor
  axis, so its devices are neighbours (one host, the fastest links)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(cfg, len(devices))
  return Mesh(np.asarray(devices).reshape([sizes[a] for a in AXES]), AXES)


def batch_shards(mesh: Mesh) -> int:
  """How many slices the batch is split into: data * fsdp (it is replicated over 'model')."""
  return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over (data, fsdp), replicated over 'model'."""
  return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe:
  each host passes the rows of its own devices' batch slices; model-parallel neighbours of one
  slice share its rows)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
