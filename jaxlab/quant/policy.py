"""Quantization policy: ordered `(module-path regex -> QuantConfig)` rules, as in Qwix.

Layers ask the policy for the `dot_general` / `conv_general_dilated` to use at their module
path; with no matching rule they get the plain `jax.lax` op. Only "no quantization" exists
until the quantization issue adds QuantConfigs.
"""

import dataclasses
import re
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
  rules: tuple[tuple[str, Any], ...] = ()
  name: str = "fp32"

  def config_for(self, module_path: str) -> Any | None:
    for pattern, config in self.rules:
      if re.fullmatch(pattern, module_path):
        return config
    return None

  def dot_general(self, module_path: str) -> Callable:
    if self.config_for(module_path) is not None:
      raise NotImplementedError("quantized dot_general arrives with the quantization issue")
    return jax.lax.dot_general

  def conv_general_dilated(self, module_path: str) -> Callable:
    if self.config_for(module_path) is not None:
      raise NotImplementedError("quantized convolution arrives with the quantization issue")
    return jax.lax.conv_general_dilated


NO_QUANT = QuantPolicy()

_REGISTRY = {"fp32": NO_QUANT, "none": NO_QUANT}


def get(name: str) -> QuantPolicy:
  if name not in _REGISTRY:
    raise ValueError(f"unknown quantization policy {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]
