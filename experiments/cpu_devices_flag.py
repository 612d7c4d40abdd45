"""The --cpu_devices flag of the mains that split work over devices (bench, lr_transfer,
algoperf): how many XLA devices the host CPU becomes (jaxlab.sharding.host_devices); `apply`
also keeps freed host memory for reuse (jaxlab.sharding.host_memory)."""

from absl import flags

from jaxlab.sharding import host_devices, host_memory

CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "XLA devices the host CPU is split into, each running its share of the "
    "LR axis or batch: 0 = one per core (up to 8), 1 = the whole CPU as one device. Ignored where "
    "XLA_FLAGS sets --xla_force_host_platform_device_count")


def apply() -> int:
  """Splits the host CPU as --cpu_devices says and sets malloc to reuse XLA's freed per-step
  buffers (call first in main, before any JAX computation); returns the CPU device count."""
  host_memory.reuse_freed_memory()
  return host_devices.split_host_cpu(CPU_DEVICES.value)
