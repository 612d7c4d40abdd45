"""Real multi-process jobs on this machine (experiments.launch_local: N CPU processes joined by
jax.distributed, gloo collectives): the same run as one process, checkpoints that restore on
other meshes and process counts, and what happens when a process dies."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlab.train.metrics import read_metrics
from tests.conftest import REPO, _with_test_flags

FAULTS = "tests/sharding/fault_injection.py"
SCHEDULE = ("--config.num_steps=20", "--config.log_every=1", "--config.eval_every=10",
            "--config.checkpoint_every=10", "--config.stats_every=0",
            "--config.optim.warmup_steps=5")
DIGITS = ("--config=jaxlab/configs/digits_mlp.py", "--config.model.hidden_widths=(64,64)")
LM = ("--config=jaxlab/configs/shakespeare_lm.py", "--config.model.d_model=32",
      "--config.model.num_layers=2", "--config.model.num_heads=2", "--config.data.seq_len=32",
      "--config.batch_size=8", "--config.eval_batch_size=16", "--config.eval_max_batches=2",
      "--config.depth_metrics_every=0")
DATA_FSDP = ("--config.mesh.data=2", "--config.mesh.fsdp=2")


def _devices(n: int) -> dict:
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def _train_args(model, data_dir, workdir, *extra):
  return [*model, f"--config.data.data_dir={data_dir}", f"--workdir={workdir}", *SCHEDULE, *extra]


def _one_process(run_python, devices, *args):
  done = run_python("-m", "experiments.train", *args, env=_devices(devices))
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _launch(run_python, *args, program=("-m", "experiments.train"), env=None, processes=2,
            devices=2, timeout=300):
  return run_python("-m", "experiments.launch_local", f"--num_processes={processes}",
                    f"--devices_per_process={devices}", "--", sys.executable, *program, *args,
                    env=env, timeout=timeout)


def _metrics(workdir):
  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  loss = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  acc = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
  return loss, acc


def _assert_same_losses(got, want, steps, tol):
  for s in steps:
    assert abs(got[s] - want[s]) <= tol * max(1.0, abs(want[s])), (s, got[s], want[s])


@pytest.fixture(scope="module")
def digits_runs(tfds_data_dir, tmp_path_factory):
  """The digits MLP for 20 steps as 1 process x 4 devices and as 2 processes x 2 devices (data=2,
  fsdp=2), checkpoints at 10 and 20; returns both workdirs and the 2-process log."""
  from tests.conftest import _run_python  # the fixture's function, usable at module scope
  root = tmp_path_factory.mktemp("digits_runs")
  one, two = root / "one", root / "two"
  _one_process(_run_python, 4, *_train_args(DIGITS, tfds_data_dir, one, *DATA_FSDP))
  done = _launch(_run_python, *_train_args(DIGITS, tfds_data_dir, two, *DATA_FSDP))
  assert done.returncode == 0, done.stdout[-3000:]
  return one, two, done.stdout


def test_two_processes_match_one_process_digits(digits_runs):
  one, two, log = digits_runs
  assert "[launch_local] process 1: pid" in log and "\n[1] " in log  # both processes ran
  (loss1, acc1), (loss2, acc2) = _metrics(one), _metrics(two)
  assert sorted(loss2) == list(range(1, 21))
  _assert_same_losses(loss2, loss1, range(1, 21), 1e-5)
  assert acc2 == acc1 and sorted(acc2) == [10, 20]  # eval accuracy identical
  assert sorted(os.listdir(two / "checkpoints")) == ["10", "20"]


def test_two_processes_match_one_process_lm(tfds_data_dir, tmp_path, run_python):
  _one_process(run_python, 4, *_train_args(LM, tfds_data_dir, tmp_path / "one", *DATA_FSDP))
  done = _launch(run_python, *_train_args(LM, tfds_data_dir, tmp_path / "two", *DATA_FSDP))
  assert done.returncode == 0, done.stdout[-3000:]
  (loss1, acc1), (loss2, acc2) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
  _assert_same_losses(loss2, loss1, range(1, 21), 1e-5)
  assert acc2 == acc1 and sorted(acc2) == [10, 20]


@pytest.mark.parametrize("devices", [1, 8])
def test_two_process_checkpoint_restores_on_one_process(digits_runs, tmp_path, run_python,
                                                        tfds_data_dir, devices):
  """The step-10 checkpoint written by 2 processes x 2 devices continues on 1 process x 1 device
  and on 1 process x 8 devices to the same step-20 loss."""
  _, two, _ = digits_runs
  work = tmp_path / "work"
  shutil.copytree(two, work)
  shutil.rmtree(work / "checkpoints" / "20")
  done = _one_process(run_python, devices,
                      *_train_args(DIGITS, tfds_data_dir, work, "--config.mesh.data=-1",
                                   "--config.mesh.fsdp=1"))
  assert "resumed from checkpoint at step 10" in done.stderr
  (got, acc), (want, want_acc) = _metrics(work), _metrics(two)
  _assert_same_losses(got, want, range(11, 21), 1e-6)
  assert acc[20] == want_acc[20]


def test_killed_process_stops_the_job_and_the_rerun_resumes(digits_runs, tmp_path, run_python,
                                                            tfds_data_dir):
  """SIGKILL of process 1 before step 15: the launcher stops process 0 and exits non-zero naming
  process 1, within 60 s of the kill; the same launch again resumes from the step-10 checkpoint
  and continues the uninterrupted run bitwise (the same 2 x 2 topology)."""
  _, two, _ = digits_runs
  args = _train_args(DIGITS, tfds_data_dir, tmp_path / "run", *DATA_FSDP)
  killed = _launch(run_python, *args, program=(FAULTS,), env={"JAXLAB_KILL": "step:15:1"})
  ended = time.time()
  assert killed.returncode != 0
  assert "[launch_local] process 1" in killed.stdout and "killed by SIGKILL" in killed.stdout
  kill_time = float(killed.stdout.split("SIGKILLs itself at ")[1].split()[0])
  assert ended - kill_time < 60
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["10"]
  again = _launch(run_python, *args)
  assert again.returncode == 0, again.stdout[-3000:]
  assert "resumed from checkpoint at step 10" in again.stdout
  (got, _), (want, _) = _metrics(tmp_path / "run"), _metrics(two)
  assert got == want


def test_checkpoint_written_by_some_processes_is_never_restored(digits_runs, tmp_path,
                                                                run_python, tfds_data_dir):
  """Process 1 dies as the step-20 save starts: process 0 writes its part, which never becomes
  a checkpoint; the rerun resumes from step 10 and continues the uninterrupted run bitwise."""
  _, two, _ = digits_runs
  args = _train_args(DIGITS, tfds_data_dir, tmp_path / "run", *DATA_FSDP)
  killed = _launch(run_python, *args, program=(FAULTS,), env={"JAXLAB_KILL": "save:20:1"})
  assert killed.returncode != 0 and "killed by SIGKILL" in killed.stdout
  assert "20" not in os.listdir(tmp_path / "run" / "checkpoints")
  again = _launch(run_python, *args)
  assert again.returncode == 0, again.stdout[-3000:]
  assert "resumed from checkpoint at step 10" in again.stdout
  (got, _), (want, _) = _metrics(tmp_path / "run"), _metrics(two)
  assert got == want


def test_without_a_launcher_a_dead_peer_stops_the_others(tfds_data_dir, tmp_path):
  """Processes started directly (as on a cluster): when process 1 dies, process 0 stops with an
  error through the coordination service's heartbeat, well within 60 s."""
  env = dict(os.environ, PYTHONPATH=REPO, JAXLAB_KILL="step:5:1",
             XLA_FLAGS=_with_test_flags("--xla_force_host_platform_device_count=2"))
  args = _train_args(DIGITS, tfds_data_dir, tmp_path / "run", "--config.num_steps=100000",
                     "--heartbeat_timeout_s=10", "--coordinator_address=127.0.0.1:"
                     f"{_free_port()}", "--num_processes=2")
  logs = [open(tmp_path / f"{i}.log", "w") for i in range(2)]  # pylint: disable=consider-using-with
  procs = [subprocess.Popen([sys.executable, FAULTS, *args, f"--process_id={i}"], cwd=REPO,
                            env=env, stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    procs[1].wait(timeout=240)
    died = time.time()
    assert procs[1].returncode == -9, (tmp_path / "1.log").read_text()[-2000:]
    procs[0].wait(timeout=60)
    assert time.time() - died < 60
    out0 = (tmp_path / "0.log").read_text()
    assert procs[0].returncode != 0
    assert "another task died" in out0 or "stopped sending heartbeats" in out0, out0[-2000:]
  finally:
    for p, log in zip(procs, logs):
      p.kill()
      log.close()


def _free_port():
  from experiments.launch_local import free_port  # pylint: disable=g-import-not-at-top
  return free_port()


def test_lr_transfer_spreads_its_lr_axis_over_processes(tfds_data_dir, tmp_path, run_python):
  """4 learning rates over 2 processes x 2 devices give the 1-process sweep's losses."""
  args = ["--config=jaxlab/configs/digits_mlp.py", f"--config.data.data_dir={tfds_data_dir}",
          "--widths=32", "--base_width=32", "--log2_lrs=-8,-5", "--steps=10", "--seeds=2",
          "--parametrizations=mup"]
  one = run_python("-m", "experiments.lr_transfer", *args, f"--workdir={tmp_path / 'one'}",
                   env=_devices(4))
  assert one.returncode == 0, one.stderr[-3000:]
  two = _launch(run_python, *args, f"--workdir={tmp_path / 'two'}",
                program=("-m", "experiments.lr_transfer"))
  assert two.returncode == 0, two.stdout[-3000:]
  assert "[0] vmapped 4 LRs" in two.stdout and "[1] vmapped" not in two.stdout  # chief prints
  assert (tmp_path / "two" / "lr_transfer.png").exists()
  got, want = (json.loads((tmp_path / w / "lr_transfer.json").read_text())["results"]["mup"]["32"]
               for w in ("two", "one"))
  np.testing.assert_allclose(got["eval_loss"], want["eval_loss"], rtol=1e-6)
  assert np.shape(got["eval_loss"]) == (4, 2) and np.isfinite(got["eval_loss"]).all()
