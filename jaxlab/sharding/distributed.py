"""Multi-host start: `jax.distributed.initialize` from absl flags.

On a multi-host TPU/GPU job run the same command on every host with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (on Cloud TPU and SLURM the
three may be omitted and `--distributed` alone asks JAX to auto-detect them). Each host then reads
its own shard of the data (jaxlab.data shards by jax.process_index()) and the mesh spans all hosts'
devices. Single-host runs leave the flags unset and nothing is initialised.

CPU processes (several on one machine: experiments.launch_local) exchange collectives through
gloo. A process that dies is noticed by the others through the coordination service's heartbeat
(`--heartbeat_timeout_s`): they stop with an error instead of waiting in a collective forever.
"""

from absl import flags
import jax

from jaxlab.errors import UserError

_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of hosts (processes)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this host's index in [0, num_processes)")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 30, "a process silent this long counts as dead and every other process "
    "stops with an error (JAX's coordination-service heartbeat)")


def initialize_from_flags() -> bool:
  """Initialise the distributed runtime when asked to; returns whether it was initialised."""
  explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if not _DISTRIBUTED.value and all(v is None for v in explicit):
    return False
  if any(v is None for v in explicit) and not all(v is None for v in explicit):
    raise UserError("--coordinator_address, --num_processes and --process_id go together"
                     " (or pass none of them with --distributed to auto-detect)")
  initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
             heartbeat_timeout_s=_HEARTBEAT.value)
  return True


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, *, heartbeat_timeout_s: int = 30) -> None:
  """`jax.distributed.initialize`, with gloo for CPU collectives (the default CPU backend has
  none across processes)."""
  if heartbeat_timeout_s < 1:
    raise UserError(f"--heartbeat_timeout_s={heartbeat_timeout_s} must be >= 1")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
