"""compile_options.for_short_programs: -O1 on CPU only, and the same sweep results as XLA's
default pipeline."""

import types

import jax
import numpy as np
import optax

from jaxlab import models
from jaxlab.analysis.lr_sweep import make_sweep
from jaxlab.train import compile_options, tasks
from tests.random_data import classification_batches


def test_only_for_cpu_devices():
  assert compile_options.for_short_programs() == compile_options.SHORT_CPU_PROGRAM
  gpu = types.SimpleNamespace(platform="gpu")
  assert compile_options.for_short_programs([jax.devices()[0], gpu]) is None


def test_sweep_compiled_either_way_gives_the_same_losses():
  train, evals = classification_batches(steps=12, batch=16, features=20, classes=5)
  sweep = make_sweep(models.MLP(hidden_widths=(32,), num_classes=5), optax.adam,
                     tasks.CLASSIFICATION)
  args = (np.float32([1e-3, 1e-2]), np.uint32([0]), train, evals)
  lowered = sweep.lower(*args)
  short = lowered.compile(compile_options.SHORT_CPU_PROGRAM)(*args)
  default = lowered.compile({"xla_backend_optimization_level": 2})(*args)
  for a, b in zip(short, default):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
