"""Shared pytest fixtures."""
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope='session')
def tfds_data_dir(tmp_path_factory):
  """A session-wide TFDS data dir; jaxlab's datasets are prepared in it on first use.

  jaxlab.data.get_source prepares mnist5k / digits / shakespeare lazily (once per
  session, as the dir persists), so tests only pay for the datasets they touch.
  """
  return str(tmp_path_factory.mktemp('tfds_data'))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mlp_config(tfds_data_dir):
  """The main job's config shrunk to a few seconds: mnist5k, small MLP, frequent logging."""
  from experiments.configs import mnist5k_mlp
  c = mnist5k_mlp.get_config()
  c.data.data_dir = tfds_data_dir
  c.model.hidden_widths = (64, 64)
  c.batch_size = 64
  c.eval_batch_size = 200
  c.num_steps = 40
  c.log_every = 1
  c.eval_every = 20
  c.stats_every = 20
  c.checkpoint_every = 20
  c.optim.warmup_steps = 5
  c.optim.learning_rate = 3e-3
  return c


def _run_python(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
  full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture
def run_python():
  """Runs `python ARGS...` from the repo root in a subprocess (own device count, own signals)."""
  return _run_python
