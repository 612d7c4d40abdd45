"""Random stacked classification batches for tests that need data, not a dataset."""

import numpy as np


def classification_batches(steps: int, batch: int, features: int, classes: int,
                           eval_examples: int = 32, seed: int = 0) -> tuple[dict, dict]:
  """(train {'image' [steps, batch, features], 'label' [steps, batch]}, eval batch of
  eval_examples), normal features and uniform labels."""
  rng = np.random.default_rng(seed)
  train = {"image": rng.normal(size=(steps, batch, features)).astype(np.float32),
           "label": rng.integers(0, classes, size=(steps, batch)).astype(np.int32)}
  evals = {"image": rng.normal(size=(eval_examples, features)).astype(np.float32),
           "label": rng.integers(0, classes, size=(eval_examples,)).astype(np.int32)}
  return train, evals
