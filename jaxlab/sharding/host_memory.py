"""glibc's malloc kept from handing XLA:CPU's per-step buffers back to the OS, set in code.

XLA:CPU allocates each execution's temporaries as one block (234 MB per device for the bench's
LM train step) with malloc and frees it when the execution ends. glibc serves a block that
large with mmap and frees it with munmap, so every step writes to fresh pages: on the 2-core
AMD EPYC the LM step took 114,500 minor page faults and 0.2 s of kernel time per step. With one
malloc arena, no mmap and no trimming of the heap, the freed block stays in the heap and the
next step reuses it: no page faults, 700 -> 610 ms per step (docs/results/cpu_speed.md).

The setting is process-wide and needs glibc (Linux); elsewhere nothing changes. The process
keeps its peak heap instead of returning it, as a training process does anyway. Call it before
JAX starts its backend: each of the backend's threads picks its malloc arena on first use.
"""

import ctypes

from jax._src import xla_bridge

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# (mallopt parameter, the environment variable glibc reads for it at process start, value)
_TUNABLES = ((M_ARENA_MAX, "MALLOC_ARENA_MAX", 1), (M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0),
             (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1))
SETTINGS = tuple((param, value) for param, _, value in _TUNABLES)
# The same settings for a subprocess (e.g. experiments.bench --torch_same_malloc's PyTorch worker).
GLIBC_ENV = {name: str(value) for _, name, value in _TUNABLES}


def reuse_freed_memory() -> bool:
  """Sets glibc's malloc to one arena, no mmap and no heap trimming (module docstring). Returns
  True when all three took effect before JAX's backend started; False where the C library has
  no mallopt (not glibc), refused a setting, or the backend's threads already run."""
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  applied = [mallopt(param, value) == 1 for param, value in SETTINGS]
  return all(applied) and not xla_bridge.backends_are_initialized()
