"""split_host_cpu: the CPU device count set in code, and left alone where the user or a running
JAX chose it."""

import json

import jax
import pytest

from jaxlab.errors import UserError
from jaxlab.sharding import host_devices

_REPORT = ("import json, jax; from jax._src import xla_bridge; "
           "from jaxlab.sharding import host_devices; "
           "got = host_devices.split_host_cpu({n}); "
           "assert not xla_bridge.backends_are_initialized(), 'jax.distributed could not follow'; "
           "print(json.dumps([got, len(jax.devices()), host_devices.usable_cores()]))")


def _report(run_python, n, env=None):
  done = run_python("-c", _REPORT.format(n=n), env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_sets_the_count_in_a_fresh_process(run_python):
  assert _report(run_python, 3)[:2] == [3, 3]
  got, devices, cores = _report(run_python, 0)
  assert got == devices == min(cores, 8)


def test_respects_the_users_xla_flag(run_python):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert _report(run_python, 3, env)[:2] == [2, 2]


def test_after_jax_ran_it_reports_the_count_without_raising():
  jax.numpy.zeros(1).block_until_ready()
  assert host_devices.split_host_cpu(5) == len(jax.devices("cpu"))


def test_negative_count_is_a_user_error():
  with pytest.raises(UserError, match="--cpu_devices=-1"):
    host_devices.split_host_cpu(-1)
