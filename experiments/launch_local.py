r"""Runs one command as an N-process JAX job on this machine (a stand-in for a cluster scheduler).

  python -m experiments.launch_local --num_processes=2 --devices_per_process=2 -- \
      python -m experiments.train --config=jaxlab/configs/digits_mlp.py --workdir=/tmp/dp2

starts N copies of the command after `--`, each with `--coordinator_address=127.0.0.1:<free
port> --num_processes=N --process_id=i` appended (every jaxlab launcher takes these flags:
jaxlab/sharding/distributed.py), and with `--devices_per_process` simulated CPU devices each
(XLA_FLAGS). Their output is streamed line by line with a `[i]` prefix. Fails fast: when one
process exits non-zero or is killed, the others get SIGTERM, then SIGKILL after
`--kill_grace_s`, and the launcher exits non-zero naming the process and its cause. SIGINT /
SIGTERM to the launcher are forwarded to every process (they save a checkpoint and stop).

On a real cluster no launcher is needed: run the same command on every host (see the README,
"Many hosts").
"""

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "number of processes to start (>= 1)")
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 0, "simulated CPU devices per process "
    "(--xla_force_host_platform_device_count); 0 keeps XLA_FLAGS as they are")
_PORT = flags.DEFINE_integer("port", 0, "coordinator port on 127.0.0.1; 0 picks a free one")
_KILL_GRACE = flags.DEFINE_float(
    "kill_grace_s", 10.0, "after one process fails, seconds between SIGTERM and SIGKILL for the "
    "others (a process blocked in a collective with a dead peer cannot stop by itself)")

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def xla_flags_with_devices(xla_flags: str, devices: int) -> str:
  """XLA_FLAGS with the simulated device count set to `devices` (any earlier count removed)."""
  kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S+", "", xla_flags).split()
  return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={devices}"])


def process_commands(command: list[str], num_processes: int, port: int) -> list[list[str]]:
  """The command of each process: `command` plus the three distributed-runtime flags."""
  return [command + [f"--coordinator_address=127.0.0.1:{port}",
                     f"--num_processes={num_processes}", f"--process_id={i}"]
          for i in range(num_processes)]


def describe_exit(code: int) -> str:
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def _stream(i: int, pipe, out, last_lines: collections.deque) -> None:
  for line in iter(pipe.readline, ""):
    out.write(f"[{i}] {line}")
    out.flush()
    if line.strip():
      last_lines.append(line.strip())
  pipe.close()


def _signal_all(procs, sig) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass


def run(command: list[str], num_processes: int, devices_per_process: int = 0, port: int = 0,
        kill_grace_s: float = 10.0, out=sys.stdout) -> int:
  """Starts the processes, streams their output, returns 0 when all exit 0, else the failing
  process's exit code (128 + signal number when it was killed)."""
  port = port or free_port()
  env = dict(os.environ)
  if devices_per_process:
    env["XLA_FLAGS"] = xla_flags_with_devices(env.get("XLA_FLAGS", ""), devices_per_process)
  procs, threads = [], []
  tails = [collections.deque(maxlen=1) for _ in range(num_processes)]
  for i, cmd in enumerate(process_commands(command, num_processes, port)):
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, bufsize=1, start_new_session=True)
    procs.append(p)
    out.write(f"[launch_local] process {i}: pid {p.pid}\n")
    t = threading.Thread(target=_stream, args=(i, p.stdout, out, tails[i]), daemon=True)
    t.start()
    threads.append(t)
  out.flush()
  forwarded = []

  def forward(signum, frame):
    del frame
    forwarded.append(signum)
    _signal_all(procs, signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  failed = None
  try:
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      if not forwarded:  # after a forwarded signal, every process saves and stops by itself
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None:
          break
      time.sleep(0.05)
    if failed is not None:
      out.write(f"[launch_local] process {failed} (pid {procs[failed].pid}) failed: "
                f"{describe_exit(procs[failed].returncode)}; stopping the others\n")
      out.flush()
      _signal_all(procs, signal.SIGTERM)
      deadline = time.time() + kill_grace_s
      while any(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.05)
      _signal_all(procs, signal.SIGKILL)
    for p in procs:
      p.wait()
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  for t in threads:
    t.join(timeout=5)
  if failed is None:  # all exited (after a forwarded signal: the first non-zero code, if any)
    return next((_as_exit_code(p.returncode) for p in procs if p.returncode), 0)
  code = procs[failed].returncode
  summary = ", ".join(f"{i}: {describe_exit(p.returncode)}" for i, p in enumerate(procs))
  last = f"; its last line: {tails[failed][0]}" if tails[failed] else ""
  out.write(f"[launch_local] failed: process {failed} {describe_exit(code)} (all: {summary})"
            f"{last}\n")
  out.flush()
  return _as_exit_code(code)


def _as_exit_code(returncode: int) -> int:
  """A Popen return code as a shell exit code (killed by signal s: 128 + s)."""
  return 128 - returncode if returncode < 0 else returncode


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError("nothing to launch: put the command after `--`, e.g. -- python -m "
                         "experiments.train --config=... --workdir=...")
  if _NUM_PROCESSES.value < 1:
    raise app.UsageError(f"--num_processes={_NUM_PROCESSES.value} must be >= 1")
  if _DEVICES.value < 0:
    raise app.UsageError(f"--devices_per_process={_DEVICES.value} must be >= 0")
  sys.exit(run(command, _NUM_PROCESSES.value, _DEVICES.value, _PORT.value, _KILL_GRACE.value))


if __name__ == "__main__":
  app.run(main)
