"""Fail fast, by name, on a `--config.key=value` override whose key the config does not have.

ml_collections raises a bare AttributeError deep in flag parsing; this check runs first and
says which key is unknown and which keys exist at that level.
"""

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


def unknown_override(argv: Sequence[str], flag: str = "config") -> str | None:
  """Message naming the first unknown `--<flag>.a.b` key in argv, or None if all exist."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  if path is None:
    return None
  try:
    config = load_config(path)
  except FileNotFoundError as e:
    return str(e)
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    key = arg[len(flag) + 3:].split("=", 1)[0]
    node = config
    for i, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        parent = ".".join(key.split(".")[:i]) or "<top level>"
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (f"unknown config key {key!r} in {arg!r} for --{flag}={path}; "
                f"valid keys under {parent}: {', '.join(valid)}")
      node = node[part]
  return None


def exit_on_unknown_override(argv: Sequence[str] = tuple(sys.argv)) -> None:
  message = unknown_override(argv)
  if message:
    sys.stderr.write(f"FATAL: {message}\n")
    sys.exit(2)
