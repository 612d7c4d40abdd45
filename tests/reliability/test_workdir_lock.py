"""Issue 15 item 6: one run per workdir. A second run exits 2 at once, naming the first run's pid
and host; the lock goes with its holder (exit, exception, SIGTERM, SIGKILL) and a lock file left by
a dead run is taken over with a warning."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxlab.train import loop
from jaxlab.train import workdir as wd
from jaxlab.train.metrics import read_metrics
from tests.conftest import REPO
from tests.reliability.test_config_drift import tiny_args

# Holds the workdir lock the way a run does, then waits to be killed.
HOLDER = """
import sys, time
from jaxlab.train.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.stdout.readline().strip() == "locked"
  return proc


def lock_is_free(workdir):
  lock = wd.WorkdirLock(str(workdir)).acquire()
  lock.release()
  return True


def test_second_run_exits_2_at_once_naming_the_holder_then_takes_over_after_sigkill(
    tfds_data_dir, tmp_path, run_python):
  workdir = tmp_path / "w"
  workdir.mkdir()
  holder = start_holder(workdir)
  try:
    t0 = time.time()
    run = run_python(*tiny_args(tfds_data_dir, workdir))
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Load dataset info" not in run.stderr
    [line] = [ln for ln in run.stderr.splitlines() if "in use by" in ln]
    assert [ln for ln in run.stderr.splitlines() if ln.startswith(("E", "F"))] == [line]
    assert f"pid {holder.pid} on host {socket.gethostname()}" in line
    assert time.time() - t0 < 60  # before any data or compile work; a slow CI box stays < 60 s
    assert sorted(os.listdir(workdir)) == [wd.LOCK]  # wrote nothing
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()

  # the kernel dropped the dead holder's flock; its pid/host are still in the file
  assert json.loads((workdir / wd.LOCK).read_text())["pid"] == holder.pid
  run = run_python(*tiny_args(tfds_data_dir, workdir))
  assert run.returncode == 0, run.stderr[-3000:]
  [warning] = [ln for ln in run.stderr.splitlines() if "stale lock" in ln]
  assert f"pid {holder.pid} on host {socket.gethostname()} (not running)" in warning
  assert (workdir / wd.LOCK).read_text() == "" and lock_is_free(workdir)  # released at exit


def test_two_runs_at_once_one_trains_one_exits_2(tfds_data_dir, tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO)
  args = [sys.executable, *tiny_args(tfds_data_dir, workdir)]
  procs = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], [err[-2000:] for _, err in outs]
  steps = [r["step"] for r in read_metrics(workdir / "metrics.jsonl")]
  assert steps == [5, 10, 15, 20]  # each row once


def test_lock_released_after_an_exception_and_after_sigterm(mlp_config, tfds_data_dir, tmp_path):
  mlp_config.optim.schedule = "bogus"
  with pytest.raises(Exception, match="bogus"):
    loop.train_and_evaluate(mlp_config, str(tmp_path / "e"))
  assert lock_is_free(tmp_path / "e")

  workdir = tmp_path / "t"
  proc = subprocess.Popen([sys.executable, *tiny_args(tfds_data_dir, workdir, 100000)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  with pytest.raises(wd.WorkdirError, match=f"pid {proc.pid}"):
    wd.WorkdirLock(str(workdir)).acquire()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert (workdir / wd.LOCK).read_text() == "" and lock_is_free(workdir)


def test_lock_file_naming_a_live_process_that_holds_no_flock_is_refused(tmp_path, caplog):
  """No flock but the named pid runs on this host (a filesystem without flock?): refuse, say how
  to clear it. Another host's entry with a free flock is stale: taken over with a warning."""
  lock = tmp_path / wd.LOCK
  lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
  with pytest.raises(wd.WorkdirError, match=f"pid {os.getppid()} .* delete the file"):
    wd.WorkdirLock(str(tmp_path)).acquire()
  assert json.loads(lock.read_text())["pid"] == os.getppid()  # left as it was

  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
  with wd.WorkdirLock(str(tmp_path)):
    assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
  assert "stale lock" in caplog.text and "host elsewhere (lock not held)" in caplog.text
  assert lock.read_text() == ""
