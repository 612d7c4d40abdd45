"""experiments.launch_local on plain Python children (no JAX): flags, log prefixes, fail-fast."""

import sys
import time

from experiments import launch_local

CHILD = """
import signal, sys, time
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
i = int(flags["process_id"])
print(f"hello from {i} of {flags['num_processes']} via {flags['coordinator_address']}", flush=True)
if "fail" in sys.argv:
  if i == 1:
    sys.exit(3)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # blocked, like a process in a dead collective
  time.sleep(600)
"""


def _launch(run_python, *child_args, processes=2):
  return run_python("-m", "experiments.launch_local", f"--num_processes={processes}",
                    "--kill_grace_s=1", "--", sys.executable, "-c", CHILD, *child_args)


def test_children_get_the_distributed_flags_and_prefixed_logs(run_python):
  done = _launch(run_python, "--mode=ok", processes=3)
  assert done.returncode == 0, done.stdout + done.stderr
  port = done.stdout.split("via 127.0.0.1:")[1].split()[0]
  for i in range(3):
    assert f"[{i}] hello from {i} of 3 via 127.0.0.1:{port}\n" in done.stdout


def test_one_failure_stops_the_others(run_python):
  t0 = time.time()
  done = _launch(run_python, "fail")
  assert time.time() - t0 < 60
  assert done.returncode == 3
  assert "process 1" in done.stdout and "failed: exit code 3" in done.stdout
  assert "0: killed by SIGKILL" in done.stdout  # it ignored SIGTERM, so SIGKILL after the grace
  assert "its last line: hello from 1 of 2" in done.stdout


def test_xla_flags_and_commands():
  assert launch_local.xla_flags_with_devices(
      "--a=1 --xla_force_host_platform_device_count=8 --b", 2) == (
          "--a=1 --b --xla_force_host_platform_device_count=2")
  assert launch_local.process_commands(["prog", "--x"], 2, 1234)[1] == [
      "prog", "--x", "--coordinator_address=127.0.0.1:1234", "--num_processes=2",
      "--process_id=1"]
  assert launch_local.describe_exit(-9) == "killed by SIGKILL"
  assert launch_local.describe_exit(2) == "exit code 2"


def test_nothing_to_launch_is_a_usage_error(run_python):
  done = run_python("-m", "experiments.launch_local", "--num_processes=2")
  assert done.returncode != 0 and "put the command after `--`" in done.stderr
