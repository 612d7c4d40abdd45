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
  assert dict(mesh.shape) == {"data": len(devices), "fsdp": 1, "model": 1}  # model defaults to 1
  with pytest.raises(UserError, match="config.mesh"):
    sharding.make_mesh(ml_collections.ConfigDict({"data": 3, "fsdp": 1}), devices * 2)


def test_mesh_shape_fills_minus_one_on_any_axis():
  cfg = lambda **k: ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1, **k})  # noqa
  assert sharding.mesh_shape(cfg(data=-1, model=2), 8) == {"data": 4, "fsdp": 1, "model": 2}
  assert sharding.mesh_shape(cfg(data=2, fsdp=2, model=-1), 8) == {"data": 2, "fsdp": 2, "model": 2}
  assert sharding.mesh_shape(cfg(data=2, fsdp=2, model=2), 8) == {"data": 2, "fsdp": 2, "model": 2}


@pytest.mark.parametrize("sizes, match", [
    (dict(data=-1, model=3), r"does not tile the 8 available devices; valid: data \* fsdp \* "
                             r"model = 8 \(config.mesh.data, .fsdp, .model\)"),
    (dict(data=2, model=2), r"config.mesh \(data=2, fsdp=1, model=2\) does not tile"),
    (dict(data=-1, model=-1), "-1 .* on one axis at most"),
    (dict(model=0), "valid sizes are positive integers"),
])
def test_mesh_shape_names_the_config_keys_when_it_does_not_tile(sizes, match):
  cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1, **sizes})
  with pytest.raises(UserError, match=match):
    sharding.mesh_shape(cfg, 8)


def test_heads_and_mlp_go_to_model_embed_to_fsdp():
  mesh = FakeMesh(data=2, fsdp=2, model=2)
  assert sharding.partition_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "model")
  assert sharding.partition_spec(("mlp", "embed"), (256, 64), mesh) == P("model", "fsdp")
  assert sharding.partition_spec(("embed", "heads"), (64, 192), mesh) == P("fsdp", "model")
  assert sharding.partition_spec(("heads", "embed"), (64, 64), mesh) == P("model", "fsdp")
  # no 'model' axis (or one device on it): heads / mlp fall back to 'fsdp' as before
  spec = sharding.partition_spec
  assert spec(("input", "mlp"), (784, 64), FakeMesh(data=2, fsdp=4)) == P(None, "fsdp")
  assert spec(("input", "mlp"), (784, 64), FakeMesh(data=1, fsdp=4, model=1)) == P(None, "fsdp")
  # not divisible over 'model': the next rule ('fsdp') if that axis is still free
  assert spec(("input", "mlp"), (784, 6), FakeMesh(data=1, fsdp=2, model=4)) == P(None, "fsdp")


def test_batch_is_split_over_data_and_fsdp_only():
  devices = jax.devices()
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1}), devices)
  assert sharding.batch_shards(mesh) == len(devices)
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
