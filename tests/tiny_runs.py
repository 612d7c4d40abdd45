"""The tiny mnist5k MLP run that the resume and fault-injection tests train through
experiments.train: 40 steps (by default), a metrics row per step, checkpoints every 20 steps;
seconds on a CPU."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_args(data_dir, workdir, num_steps=40) -> list[str]:
  """experiments.train flags of the tiny run in `workdir`."""
  return ["--config=jaxlab/configs/mnist5k_mlp.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.model.hidden_widths=(64,64)",
          "--config.batch_size=64", f"--config.num_steps={num_steps}", "--config.log_every=1",
          "--config.eval_every=0", "--config.stats_every=0", "--config.checkpoint_every=20",
          "--config.optim.learning_rate=3e-3", "--config.optim.warmup_steps=5"]


def train(data_dir, workdir, *pre, env=None):
  """`python [pre] -m experiments.train ARGS` (or `python -c CODE ARGS`) from the repo root."""
  cmd = [*pre] if pre else ["-m", "experiments.train"]
  return subprocess.run([sys.executable, *cmd, *mlp_args(data_dir, workdir)], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO, **(env or {})),
                        capture_output=True, text=True, timeout=300)
