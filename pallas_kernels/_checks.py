"""Argument checks shared by the kernel dispatchers (api.py of each op)."""

import numbers
from typing import Callable

import numpy as np
from absl import logging


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


def resolve_implementation(implementation, valid: tuple[str, ...], *, default: str,
                           unsupported_reason: Callable[[bool], str | None], op: str,
                           fallback: str = "xla") -> str:
  """The implementation to run, for dispatchers whose explicit choices are honoured or refused.

  implementation not None and not in `valid` -> ValueError naming the argument and the valid
  values. None -> `default`, and when that is "pallas" but unsupported_reason(False) says the
  compiled kernels cannot run this call, `fallback` (logged at warning level). An explicit
  "pallas" / "pallas_interpret" the kernels cannot run -> ValueError with the reason.
  unsupported_reason(interpret) returns None when the kernels can run.
  """
  if implementation is not None and implementation not in valid:
    raise ValueError(f"implementation must be None or one of {valid}; got {implementation!r}")
  impl = implementation or default
  if impl not in ("pallas", "pallas_interpret"):
    return impl
  reason = unsupported_reason(impl == "pallas_interpret")
  if reason is None:
    return impl
  if implementation is None:
    logging.warning("pallas_kernels.%s: default %r cannot run this call, using %r: %s", op, impl,
                    fallback, reason)
    return fallback
  others = tuple(v for v in valid if v != impl)
  raise ValueError(f"implementation={impl!r} cannot run this call: {reason}. Valid values: None "
                   f"(picks one that runs) or one of {others}")
