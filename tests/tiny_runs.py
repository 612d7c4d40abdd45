"""The tiny mnist5k MLP run that the resume, fault-injection and other reliability tests train
through experiments.train: 40 steps (by default), a metrics row per step, checkpoints every 20
steps; seconds on a CPU."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = "jaxlab/configs/mnist5k_mlp.py"
VIT = "jaxlab/configs/mnist5k_vit.py"


def tiny_args(config, data_dir, workdir=None, num_steps=40, *extra) -> list[str]:
  """experiments.train flags of a tiny run of the `config` file in `workdir` (None: no --workdir
  flag); `extra` go last, and a later --config.key=value wins over the defaults here."""
  return [f"--config={config}", *([f"--workdir={workdir}"] if workdir is not None else []),
          f"--config.data.data_dir={data_dir}", "--config.batch_size=64",
          f"--config.num_steps={num_steps}", "--config.log_every=1", "--config.eval_every=0",
          "--config.stats_every=0", "--config.checkpoint_every=20",
          "--config.optim.learning_rate=3e-3", "--config.optim.warmup_steps=5", *extra]


def mlp_args(data_dir, workdir, num_steps=40, *extra) -> list[str]:
  """experiments.train flags of the tiny MLP run (hidden widths (64, 64)) in `workdir`."""
  return tiny_args(MLP, data_dir, workdir, num_steps, "--config.model.hidden_widths=(64,64)",
                   *extra)


def train(data_dir, workdir, *pre, env=None):
  """`python [pre] -m experiments.train ARGS` (or `python -c CODE ARGS`) from the repo root."""
  cmd = [*pre] if pre else ["-m", "experiments.train"]
  return subprocess.run([sys.executable, *cmd, *mlp_args(data_dir, workdir)], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, **(env or {})),
                        capture_output=True, text=True, timeout=300)
