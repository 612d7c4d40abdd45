"""Meshes, partition rules and multi-host initialisation."""

from jaxlab.sharding.mesh import AXES, batch_sharding, make_mesh, replicated, shard_batch
from jaxlab.sharding.rules import DEFAULT_RULES, param_shardings, partition_spec
