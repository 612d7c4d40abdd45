r"""Step time of one training config as 1, 2, 4, ... processes on this machine.

  python -m experiments.scaling_out --config=jaxlab/configs/shakespeare_lm.py --processes=1,2,4 \
      --steps=30 --workdir=/tmp/scaling_out

For each N it trains the config twice through experiments.launch_local and experiments.train:
N processes x 1 device (data=N: the batch split over processes, gradients all-reduced through
gloo) and 1 process x N simulated devices (the same program without the processes), and reads
the steady-state seconds per step (after the first, compiling step) that the train loop reports.
Writes scaling_out.json and prints a table. One multi-core machine is no cluster: the processes
share its cores and its memory bandwidth, and gloo over localhost stands in for the network.
"""

import io
import json
import os
import shutil
import sys

from absl import app, flags

from experiments import launch_local

_CONFIG = flags.DEFINE_string("config", "jaxlab/configs/shakespeare_lm.py", "a jaxlab/configs file")
_PROCESSES = flags.DEFINE_list("processes", ["1", "2", "4"], "process counts to time")
_STEPS = flags.DEFINE_integer("steps", 30, "train steps per run (the first one compiles)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the runs and scaling_out.json go")
_OVERRIDES = flags.DEFINE_list("overrides", [], "extra --config.key=value flags for every run")
flags.mark_flags_as_required(["workdir"])


def train_command(workdir: str, n: int) -> list[str]:
  return [sys.executable, "-m", "experiments.train", f"--config={_CONFIG.value}",
          f"--workdir={workdir}", f"--config.num_steps={_STEPS.value}",
          f"--config.checkpoint_every={_STEPS.value}", "--config.eval_every=0",
          "--config.eval_max_batches=1", "--config.stats_every=0",
          "--config.depth_metrics_every=0", f"--config.log_every={_STEPS.value}",
          f"--config.optim.warmup_steps={_STEPS.value // 10}",
          f"--config.mesh.data={n}", "--config.mesh.fsdp=1", *_OVERRIDES.value]


def timed_run(workdir: str, processes: int, devices_per_process: int) -> dict:
  """Trains from scratch in workdir; the final metrics of process 0 (steady_step_s included)."""
  shutil.rmtree(workdir, ignore_errors=True)
  out = io.StringIO()
  code = launch_local.run(train_command(workdir, processes * devices_per_process), processes,
                          devices_per_process, out=out)
  log = out.getvalue()
  if code:
    raise RuntimeError(f"{processes} x {devices_per_process} run failed (exit {code}):\n"
                       f"{log[-3000:]}")
  final = next(line for line in log.splitlines() if line.startswith("[0] ") and "final: {" in line)
  return json.loads(final.split("final: ", 1)[1])


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for n in map(int, _PROCESSES.value):
    procs = timed_run(os.path.join(_WORKDIR.value, f"p{n}x1"), n, 1)
    devices = timed_run(os.path.join(_WORKDIR.value, f"p1x{n}"), 1, n)
    rows.append({"n": n, "processes_step_s": procs["steady_step_s"],
                 "devices_step_s": devices["steady_step_s"],
                 "processes_loss": procs["train/loss"], "devices_loss": devices["train/loss"]})
    print(f"N={n}: {n} processes x 1 device {procs['steady_step_s'] * 1e3:.1f} ms/step, 1 process"
          f" x {n} devices {devices['steady_step_s'] * 1e3:.1f} ms/step", flush=True)
  base = rows[0]["processes_step_s"]
  print("\n| N | N processes x 1 device (ms/step) | vs N=1 | 1 process x N devices (ms/step) |"
        " processes / devices | final loss (processes, devices) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['n']} | {r['processes_step_s'] * 1e3:.1f} | {base / r['processes_step_s']:.2f}x |"
          f" {r['devices_step_s'] * 1e3:.1f} | {r['processes_step_s'] / r['devices_step_s']:.2f} |"
          f" {r['processes_loss']:.6f}, {r['devices_loss']:.6f} |")
  with open(os.path.join(_WORKDIR.value, "scaling_out.json"), "w") as f:
    json.dump({"config": _CONFIG.value, "steps": _STEPS.value, "overrides": _OVERRIDES.value,
               "cpu": _cpu_model(), "cores": os.cpu_count(), "rows": rows}, f, indent=1)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown"


if __name__ == "__main__":
  app.run(main)
