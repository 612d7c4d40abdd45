"""Issue 15 item 7, Ctrl-C and signals during start-up, through the real launcher: SIGINT in the
loop saves a checkpoint and exits 130 with one line, and the rerun resumes bit-exactly; SIGINT or
SIGTERM during start-up (imports, data, init) exits with one line, no traceback, nothing written,
and the same command then runs normally."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jaxlab.train.metrics import read_metrics
from tests.tiny_runs import mlp_args as tiny_args

EXIT_CODE = {"SIGINT": 130, "SIGTERM": 0}  # SIGTERM keeps its documented exit 0


# Runs experiments.train and sends itself SIGNAL right after metrics for step AT are written (a
# Ctrl-C in the middle of the loop, 3 steps after the checkpoint at step 20).
SIGNAL_IN_LOOP = """
import os, signal, sys
from absl import app
from jaxlab.train import metrics
from experiments import train
write = metrics.MetricsWriter.write
def write_then_signal(self, step, row):
  write(self, step, row)
  if step == int(os.environ["AT"]):
    os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
metrics.MetricsWriter.write = write_then_signal
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""

# Sends itself SIGNAL while the train iterator is being built (start-up: after the config checks,
# before init, restore and the first step).
SIGNAL_IN_START_UP = """
import os, signal, sys
from absl import app
from jaxlab import data
from experiments import train
make = data.make_train_iterator
def make_then_signal(*args, **kwargs):
  it = make(*args, **kwargs)
  os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
  return it
data.make_train_iterator = make_then_signal
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in r}


def lines_with(text, needle):
  return [line for line in text.splitlines() if needle in line]


def test_sigint_in_loop_saves_exits_130_and_resumes_bitwise(tfds_data_dir, tmp_path, run_python):
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  done = run_python("-m", "experiments.train", *tiny_args(tfds_data_dir, straight))
  assert done.returncode == 0, done.stderr[-3000:]

  out = run_python("-c", SIGNAL_IN_LOOP, *tiny_args(tfds_data_dir, stopped),
                   env={"AT": "23", "SIGNAL": "SIGINT"})
  assert out.returncode == 130, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr
  assert len(lines_with(out.stderr, "stopped by SIGINT")) == 1
  assert "stopped by SIGINT at step 23; rerun the same command to resume" in out.stderr
  assert sorted(os.listdir(stopped / "checkpoints")) == ["20", "23"]
  assert max(losses(stopped)) == 23

  resumed = run_python("-m", "experiments.train", *tiny_args(tfds_data_dir, stopped))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint at step 23" in resumed.stderr
  a, b = losses(straight), losses(stopped)
  assert sorted(b) == list(range(1, 41))
  assert [a[s] for s in range(1, 41)] == [b[s] for s in range(1, 41)]  # bitwise (exact floats)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_during_start_up_exits_cleanly(tfds_data_dir, tmp_path, run_python, name):
  workdir = tmp_path / "w"
  out = run_python("-c", SIGNAL_IN_START_UP, *tiny_args(tfds_data_dir, workdir, num_steps=5),
                   env={"SIGNAL": name})
  assert out.returncode == EXIT_CODE[name], out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr
  [line] = lines_with(out.stderr, f"stopped by {name}")
  assert line.endswith(f"stopped by {name} during start-up (nothing new was saved); rerun the same"
                       " command to resume")
  for written in ("config.json", "metrics.jsonl", "checkpoints"):
    assert not (workdir / written).exists(), written
  rerun = run_python("-m", "experiments.train", *tiny_args(tfds_data_dir, workdir, num_steps=5))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert sorted(losses(workdir)) == [1, 2, 3, 4, 5]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_while_importing_exits_cleanly(tfds_data_dir, tmp_path, name):
  """A signal as soon as experiments.train has installed its first handlers (before jax and the
  data libraries are imported): one line, no traceback."""
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train",
                           *tiny_args(tfds_data_dir, workdir, num_steps=100000)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  sigterm_bit = 1 << (signal.SIGTERM - 1)
  deadline = time.time() + 60
  while True:  # SigCgt: the signals the process catches; SIGTERM's bit is our handler's
    assert proc.poll() is None and time.time() < deadline, "did not start"
    with open(f"/proc/{proc.pid}/status") as f:
      caught = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
    if caught & sigterm_bit:
      break
    time.sleep(0.005)
  proc.send_signal(getattr(signal, name))
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_CODE[name], err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert len(lines_with(err, f"stopped by {name} during start-up")) == 1, err[-3000:]
  assert not (workdir / "metrics.jsonl").exists() and not (workdir / "config.json").exists()
