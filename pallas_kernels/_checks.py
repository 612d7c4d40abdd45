"""Argument checks shared by the kernel dispatchers (api.py of each op)."""

import numbers


def positive_int(name: str, value) -> int | None:
  """None, or `value` as an int when it is a positive integer; else a ValueError naming it."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name} must be None or a positive int; got {value!r}")
  return int(value)
