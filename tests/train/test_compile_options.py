"""compile_options.for_short_programs: -O1 on CPU only, and the same sweep results as XLA's
default pipeline."""

import types

import jax
import numpy as np
import optax

from jaxlab import models
from jaxlab.analysis.lr_sweep import make_sweep
from jaxlab.train import compile_options, tasks


def test_only_for_cpu_devices():
  assert compile_options.for_short_programs() == compile_options.SHORT_CPU_PROGRAM
  gpu = types.SimpleNamespace(platform="gpu")
  assert compile_options.for_short_programs([jax.devices()[0], gpu]) is None


def test_sweep_compiled_either_way_gives_the_same_losses():
  rng = np.random.default_rng(0)
  train = {"image": rng.normal(size=(12, 16, 20)).astype(np.float32),
           "label": rng.integers(0, 5, size=(12, 16)).astype(np.int32)}
  evals = {"image": rng.normal(size=(32, 20)).astype(np.float32),
           "label": rng.integers(0, 5, size=(32,)).astype(np.int32)}
  sweep = make_sweep(models.MLP(hidden_widths=(32,), num_classes=5), optax.adam,
                     tasks.CLASSIFICATION)
  args = (np.float32([1e-3, 1e-2]), np.uint32([0]), train, evals)
  lowered = sweep.lower(*args)
  short = lowered.compile(compile_options.SHORT_CPU_PROGRAM)(*args)
  default = lowered.compile({"xla_backend_optimization_level": 2})(*args)
  for a, b in zip(short, default):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
