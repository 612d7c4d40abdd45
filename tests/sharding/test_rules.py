"""Partition rules and meshes (shape logic; 1 real device is enough for these)."""

import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from jaxlab import sharding
from jaxlab.errors import UserError


class FakeMesh:
  """Only `.shape` is read by partition_spec."""

  def __init__(self, **shape):
    self.shape = shape


def test_partition_spec_shards_divisible_dims_once():
  mesh = FakeMesh(data=2, fsdp=4)
  assert sharding.partition_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", None)
  assert sharding.partition_spec(("embed", "mlp"), (6, 256), mesh) == P(None, "fsdp")
  assert sharding.partition_spec(("embed", "mlp"), (6, 10), mesh) == P(None, None)
  assert sharding.partition_spec(("norm",), (64,), mesh) == P(None)


def test_partition_spec_replicates_on_single_device_axis():
  assert sharding.partition_spec(("embed", "mlp"), (64, 64), FakeMesh(data=8, fsdp=1)) == P(None, None)


def test_make_mesh_fills_minus_one_and_rejects_bad_tiling():
  devices = jax.devices()
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}), devices)
  assert dict(mesh.shape) == {"data": len(devices), "fsdp": 1}
  with pytest.raises(UserError, match="config.mesh"):
    sharding.make_mesh(ml_collections.ConfigDict({"data": 3, "fsdp": 1}), devices * 2)
