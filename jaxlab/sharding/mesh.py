"""Device meshes with a data-parallel axis and a fully-sharded (FSDP) axis."""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.errors import UserError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over every device


def make_mesh(cfg: Any, devices=None) -> Mesh:
  """Mesh of shape (data, fsdp) from config.mesh; -1 on one axis means "all remaining devices"."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, fsdp = int(cfg.data), int(cfg.fsdp)
  if data == -1 and fsdp == -1:
    raise UserError("config.mesh.data and config.mesh.fsdp cannot both be -1; valid: -1 on one axis"
                    " at most")
  if data == -1:
    data = n // fsdp if fsdp > 0 else 0
  if fsdp == -1:
    fsdp = n // data if data > 0 else 0
  if data <= 0 or fsdp <= 0 or data * fsdp != n:
    raise UserError(
        f"config.mesh (data={cfg.data}, fsdp={cfg.fsdp}) does not tile the {n} available devices;"
        f" choose data * fsdp = {n} (or -1 on one axis)")
  return Mesh(np.asarray(devices).reshape(data, fsdp), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split across all devices, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
