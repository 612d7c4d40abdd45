"""The host CPU split into several XLA devices, set in code rather than in XLA_FLAGS.

With one CPU device, XLA:CPU runs a program's thunks one after another and only its large
matmuls use every core; with one device per core, the LR axis of a sweep or the batch of a
train step is split over the devices and every core does independent work
(docs/results/cpu_speed.md: an LR sweep of the mnist5k MLP 1.2-1.4x faster, the LM step
0.74x -> 0.79x of PyTorch's speed on a 2-core CPU). Needs jax >= 0.5 (`jax_num_cpu_devices`).
"""

import os
import re

import jax
from jax._src import xla_bridge

from jaxlab.errors import UserError

_XLA_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def split_host_cpu(num_devices: int = 0) -> int:
  """Sets `jax_num_cpu_devices` to num_devices (0: one per usable core, capped at 8) and returns
  the number of CPU devices this process will have. Leaves the count alone, and returns what it
  is, where the user chose it (XLA_FLAGS has --xla_force_host_platform_device_count) or where a
  JAX computation already ran (the backends are initialised then). Initialises nothing itself:
  jax.distributed.initialize may follow."""
  if num_devices < 0:
    raise UserError(f"--cpu_devices={num_devices}: valid: 0 (one per core) or a positive count")
  if xla_bridge.backends_are_initialized():
    return len(jax.devices("cpu"))
  chosen = re.findall(_XLA_FLAG + r"=(\d+)", os.environ.get("XLA_FLAGS", ""))
  if chosen:  # XLA reads it when the backend starts (the last one given wins)
    return int(chosen[-1])
  count = num_devices or min(usable_cores(), 8)
  jax.config.update("jax_num_cpu_devices", count)
  return count
