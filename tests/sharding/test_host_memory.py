"""reuse_freed_memory: a jitted program whose 64 MB temporaries are allocated and freed inside
every call touches fresh pages on every call under glibc's defaults, and reuses them after it
(once the heap has grown to hold them: the first calls still fault). GLIBC_ENV gives a
subprocess the same settings."""

import json
import statistics

from jaxlab.sharding import host_memory

_FAULTS = """
import json, resource, sys
from jaxlab.sharding import host_memory
applied = host_memory.reuse_freed_memory() if {reuse} else None
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(x.at[::7].add(1.0) * x[::-1]))  # a 64 MB temporary, a scalar out
x = jnp.ones((16 * 2**20,))
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, faults[10:]]))
"""


def _last_json_line(run_python, code: str, env: dict | None = None):
  """What `python -c code` printed last, as JSON, from a fresh process."""
  done = run_python("-c", code, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_instead_of_faulted_in_again(run_python):
  """Page faults in each of calls 11-20: the temporary's 16,384 pages or more every call by
  default, none in most calls after reuse_freed_memory."""
  _, default = _last_json_line(run_python, _FAULTS.format(reuse=False))
  applied, reused = _last_json_line(run_python, _FAULTS.format(reuse=True))
  assert applied is True
  assert min(default) >= 16 * 2**20 * 4 // 4096
  assert statistics.median_high(reused) < min(default) / 10


def test_reports_false_once_the_backend_runs():
  import jax  # pylint: disable=import-outside-toplevel
  jax.numpy.zeros(1).block_until_ready()
  assert host_memory.reuse_freed_memory() is False


_NUMPY_FAULTS = """
import json, resource
import numpy as np
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  a = np.ones(8 * 2**20)  # 64 MB, freed before the next one
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  del a
print(json.dumps(faults[4:]))
"""


def test_glibc_env_gives_a_subprocess_the_same_reuse(run_python):
  """A process allocating and freeing 64 MB arrays: fresh pages every time with glibc's defaults
  (at least the 32 huge pages of 64 MB), none once GLIBC_ENV's variables are set."""
  default = _last_json_line(run_python, _NUMPY_FAULTS)
  reused = _last_json_line(run_python, _NUMPY_FAULTS, env=host_memory.GLIBC_ENV)
  assert min(default) >= 32
  assert statistics.median_high(reused) < min(default) / 10
