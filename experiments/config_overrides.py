"""Fail fast, by name, on a bad `--config.key=value` override.

ml_collections raises a bare AttributeError deep in flag parsing for an unknown key, and turns a
scalar given for a tuple-valued key into a 1-tuple (`hidden_widths=512` -> `(512,)`, a one-layer
MLP). This check runs first and says which key is wrong, the value given and what is valid.
"""

import ast
import importlib.util
import sys
from typing import Sequence

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_jaxlab_config", file)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"--config={path}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _tuple_override_error(key: str, value: str, default: tuple) -> str | None:
  """Message if `value` (for the tuple-valued `key`) is not written as a tuple, else None."""
  try:
    parsed = ast.literal_eval(value.strip())
  except (ValueError, SyntaxError):
    parsed = None
  if isinstance(parsed, (tuple, list)):
    return None
  example = "(" + ",".join(str(v) for v in default) + ("," if len(default) == 1 else "") + ")"
  one = f"--config.{key}='({value.strip()},)' for one entry or " if parsed is not None else ""
  return (f"--config.{key}={value}: {key} is a tuple, got {value.strip()!r}; write the whole "
          f"tuple, e.g. {one}--config.{key}='{example}' (the config file's value)")


def unknown_override(argv: Sequence[str], flag: str = "config") -> str | None:
  """Message naming the first bad `--<flag>.a.b` override in argv, or None if all are fine.

  Bad: a key the config does not have, or a tuple-valued key given a scalar (not a tuple).
  """
  path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  if path is None:
    return None
  try:
    config = load_config(path)
  except FileNotFoundError as e:
    return str(e)
  for i_arg, arg in enumerate(argv):
    if not arg.startswith(f"--{flag}."):
      continue
    key, eq, value = arg[len(flag) + 3:].partition("=")
    if not eq:  # `--config.key value`
      value = argv[i_arg + 1] if i_arg + 1 < len(argv) else None
    node = config
    for i, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        parent = ".".join(key.split(".")[:i]) or "<top level>"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (f"unknown config key {key!r} in {arg!r} for --{flag}={path}; "
                f"valid keys under {parent}: {', '.join(valid)}")
      node = node[part]
    if isinstance(node, tuple) and value is not None:
      message = _tuple_override_error(key, value, node)
      if message:
        return message
  return None


def exit_on_unknown_override(argv: Sequence[str] = tuple(sys.argv)) -> None:
  message = unknown_override(argv)
  if message:
    sys.stderr.write(f"FATAL: {message}\n")
    sys.exit(2)
