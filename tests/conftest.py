"""Shared pytest fixtures, and the test session's XLA settings.

Tests compile many small programs and run each for a few steps, so compile time dominates on a
CPU: the session (and every subprocess it starts) compiles with LLVM's cheap pipeline
(`TEST_XLA_FLAGS`, appended to any XLA_FLAGS already set) and shares a persistent compilation
cache between the xdist workers and the CLI subprocesses (the same train step is compiled by
several resume / CLI runs). Tests compare results computed under these same settings, so they
stay valid; benchmarks (experiments.bench*) run with XLA's default flags.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _with_test_flags(flags: str) -> str:
  return flags if TEST_XLA_FLAGS in flags else f"{flags} {TEST_XLA_FLAGS}".strip()


os.environ["XLA_FLAGS"] = _with_test_flags(os.environ.get("XLA_FLAGS", ""))
# One cache per pytest session: the process that creates it (the xdist controller, or a plain
# pytest run) removes it at the end; workers inherit its environment and reuse it.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="jaxlab_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
  from jaxlab.configs import mnist5k_mlp
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
  full_env["XLA_FLAGS"] = _with_test_flags(full_env.get("XLA_FLAGS", ""))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture
def run_python():
  """Runs `python ARGS...` from the repo root in a subprocess (own device count, own signals)."""
  return _run_python
