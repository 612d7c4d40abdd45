"""Fault tolerance through the real launcher: SIGKILL + rerun resumes bit-exactly; SIGTERM saves."""

import os
import signal
import subprocess
import sys
import time


from jaxlab.train.metrics import read_metrics
from tests.tiny_runs import mlp_args as tiny_args


# Runs experiments.train, but SIGKILLs itself right after metrics for step KILL_AT are written:
# a crash 3 steps after the checkpoint at step 20, with those 3 steps already in metrics.jsonl.
KILLER = """
import os, signal, sys
from absl import app
from jaxlab.train import metrics
from experiments import train
write = metrics.MetricsWriter.write
def write_then_die(self, step, row):
  write(self, step, row)
  if step == int(os.environ["KILL_AT"]):
    os.kill(os.getpid(), signal.SIGKILL)
metrics.MetricsWriter.write = write_then_die
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))}


def test_sigkill_then_rerun_matches_uninterrupted_run_bitwise(tfds_data_dir, tmp_path, run_python):
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  done = run_python("-m", "experiments.train", *tiny_args(tfds_data_dir, straight))
  assert done.returncode == 0, done.stderr[-3000:]

  killed = run_python("-c", KILLER, *tiny_args(tfds_data_dir, crashed), env={"KILL_AT": "23"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert max(losses(crashed)) == 23 and sorted(os.listdir(crashed / "checkpoints")) == ["20"]

  resumed = run_python("-m", "experiments.train", *tiny_args(tfds_data_dir, crashed))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in resumed.stderr
  a, b = losses(straight), losses(crashed)
  assert sorted(b) == list(range(1, 41))  # rows 21-23 of the killed run were replaced
  assert [a[s] for s in range(21, 41)] == [b[s] for s in range(21, 41)]  # bitwise (exact floats)


def test_sigterm_saves_and_exits_zero(tfds_data_dir, tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  args = tiny_args(tfds_data_dir, workdir, num_steps=100000)
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_path = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while not (metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 30):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  last = max(losses(workdir))
  assert str(last) in os.listdir(workdir / "checkpoints")
  assert f"stopped by SIGTERM at step {last}" in err
