"""Argument checks shared by the kernel dispatchers (api.py of each op)."""

import numbers

import numpy as np


def positive_int(name: str, value) -> int | None:
  """None, or `value` as an int when it is a positive integer; else a ValueError naming it."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be None or a positive int; got {value!r}")
  return int(value)


def static_number(name: str, value, *, positive: bool) -> float:
  """float(value) for a Python/numpy scalar or concrete 0-d array; ValueError for traced ones
  (the kernels bake the value in at trace time)."""
  try:
    if isinstance(value, bool) or np.ndim(value) != 0:
      raise TypeError
    value = float(value)
  except TypeError:  # includes jax.errors.ConcretizationTypeError
    raise ValueError(f"{name} must be a static Python number (not a traced or batched "
                     f"array); got {value!r}") from None
  if not np.isfinite(value) or (positive and value <= 0):
    raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number; "
                     f"got {value}")
  return value

