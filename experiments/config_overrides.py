"""`--config` as ml_collections' config-file flag, failing fast, by name, on a bad
`--config.key=value` override.

ml_collections raises a bare AttributeError deep in flag parsing for an unknown key, and turns a
scalar given for a tuple-valued key into a 1-tuple (`hidden_widths=512` -> `(512,)`, a one-layer
MLP). The flag's parser here loads the config file once (ml_collections' own loader), then checks
every override in argv against it and says which key is wrong, the value given and what is valid.
"""

import ast
import os
import sys
from typing import Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser


class BadOverrideError(flags.Error):
  """A `--config.key=value` override names no key of the config, or gives a tuple-valued key a
  scalar."""


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


def bad_override(argv: Sequence[str], config: ml_collections.ConfigDict, path: str = "",
                 flag: str = "config") -> str | None:
  """Message naming the first bad `--<flag>.a.b` override in argv, or None if all are fine.

  Bad: a key `config` does not have, or a tuple-valued key given a scalar (not a tuple).
  """
  for i_arg, arg in enumerate(argv):
    if not arg.startswith(f"--{flag}."):
      continue
    key, eq, value = arg[len(flag) + 3:].partition("=")
    if not eq:  # `--config.key value`
      value = argv[i_arg + 1] if i_arg + 1 < len(argv) else None
    node = config
    for i, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        prefix = ".".join([flag, *key.split(".")[:i]])
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (f"unknown config key {key!r} in {arg!r} for --{flag}={path}; valid keys: "
                f"{', '.join(f'{prefix}.{k}' for k in valid)}")
      node = node[part]
    if isinstance(node, tuple) and value is not None:
      message = _tuple_override_error(key, value, node)
      if message:
        return message
  return None


class _CheckedConfigFileParser(ConfigFileFlagParser):
  """ml_collections' config-file parser, then the overrides in argv checked against the config
  it loaded (a BadOverrideError before ml_collections applies them)."""

  def parse(self, path):
    if not os.path.isfile(path.partition(":")[0]):
      raise FileNotFoundError(f"--{self.name}={path}: no such config file")
    config = super().parse(path)
    message = bad_override(flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False), config,
                           path, self.name)
    if message:
      raise BadOverrideError(message)
    return config


def define_config_file(name: str, help_string: str) -> flags.FlagHolder:
  """config_flags.DEFINE_config_file(name) whose file is loaded once and whose overrides are
  checked by name (BadOverrideError, a flags.Error, from flag parsing)."""
  holder = config_flags.DEFINE_config_file(name, None, help_string)
  flags.FLAGS[name].parser = _CheckedConfigFileParser(name=name)
  return holder
