"""Meshes, partition rules and multi-host initialisation."""

from jaxlab.sharding.mesh import (AXES, BATCH_AXES, batch_shards, batch_sharding, make_mesh,
                                  mesh_shape, replicated, shard_batch)
from jaxlab.sharding.rules import DEFAULT_RULES, param_shardings, partition_spec
