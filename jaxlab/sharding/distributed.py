"""Multi-host start: `jax.distributed.initialize` from absl flags.

On a multi-host TPU/GPU job run the same command on every host with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (on Cloud TPU and SLURM the
three may be omitted and `--distributed` alone asks JAX to auto-detect them). Each host then reads
its own shard of the data (jaxlab.data shards by jax.process_index()) and the mesh spans all hosts'
devices. Single-host runs leave the flags unset and nothing is initialised.
"""

from absl import flags
import jax

_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of hosts (processes)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this host's index in [0, num_processes)")


def initialize_from_flags() -> bool:
  """Initialise the distributed runtime when asked to; returns whether it was initialised."""
  explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return False
  if any(v is None for v in explicit) and not all(v is None for v in explicit):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together"
                     " (or pass none of them with --distributed to auto-detect)")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  return True
