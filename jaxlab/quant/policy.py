"""Quantization policy: ordered `(module-path regex -> QuantConfig)` rules, as in Qwix.

Layers ask the policy for the `dot_general` / `conv_general_dilated` to use at their module
path ('dense_1', 'block_0/attn/qkv', 'readout', ...; `module_path`) for
a weight of a given parameter role (jaxlab.param.roles). A role in `keep_float_roles` gives the
plain op; otherwise the first rule whose regex matches the whole path decides: its QuantConfig
gives the quantized op (`jaxlab.quant.config`); a rule mapping to None, or no matching rule,
gives the plain `jax.lax` op, so an unquantized model traces exactly as before.

Named policies (`get(name)`):
  fp32, none  no rules;
  int8        int8 symmetric weights (per output channel) and activations (per token);
  int4_w      int4 symmetric per-channel weights, float activations;
  w4a8        int4 per-channel weights, int8 per-token activations;
  binary_w    XNOR-Net weights (sign * mean|W| per output channel), float activations;
  fp8         e4m3 weights and activations, e5m2 output gradients, per-tensor current scaling,
              on every layer (first and readout included);
  fp8_delayed the same formats with delayed scaling (Transformer Engine's recipe: the scale of
              each tensor from the max of its last 16 amaxes, `jaxlab.quant.fp8`); Dense / Conv
              keep the histories in the 'quant_state' collection, which the train state
              carries. The tied readout `Embed.attend` (path 'embed') has no state and keeps
              current scaling;
  lsq_w4a8    LSQ (Esser et al. 2020): 4-bit weights and 8-bit activations, both signed, each
              with a learned per-tensor step (params 'weight_step' / 'activation_step', role
              bias) initialised to 2 mean|x| / sqrt(Q_P) at init time (activations from the
              batch given to init: the train loop passes the first training batch).
The integer, binary and LSQ policies keep the first layer and the readout in float (the usual QAT
practice since XNOR-Net and DoReFa): keep_float_roles = KEEP_FLOAT_ROLES = (input, readout), the
weights that read the data (MLP 'dense_0', ResNet / ConvNeXt 'stem', ViT 'patch_embed', LM
'embed', whose `attend` is also the tied readout) and the readout.
"""

import dataclasses
import re
from typing import Any, Callable

import jax

from jaxlab.errors import UserError
from jaxlab.param.roles import INPUT, READOUT
from jaxlab.quant.config import (ROLES, QuantConfig, quantized_conv_general_dilated,
                                 quantized_dot_general)
from jaxlab.quant.formats import BinaryFormat, FP8Format, IntFormat, LSQFormat

KEEP_FLOAT_ROLES = (INPUT, READOUT)


def module_path(module) -> str:
  """A bound flax module's path ('dense_1', 'block_0/attn/qkv'): the key policies match."""
  return "/".join(module.scope.path)


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
  """rules: ((regex, QuantConfig | None), ...), first full match wins; keep_float_roles:
  parameter roles whose ops stay float whatever the rules; name: for logs."""

  rules: tuple[tuple[str, Any], ...] = ()
  name: str = "fp32"
  keep_float_roles: tuple[str, ...] = ()

  def __post_init__(self):
    for rule in self.rules:
      if not (isinstance(rule, tuple) and len(rule) == 2):
        raise ValueError(f"policy {self.name!r}: a rule is a (regex, QuantConfig | None) pair, "
                         f"got {rule!r}")
      pattern, config = rule
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        raise ValueError(f"policy {self.name!r}: bad module-path regex {pattern!r}: {e}") from e
      if config is not None and not isinstance(config, QuantConfig):
        raise ValueError(f"policy {self.name!r}: rule {pattern!r} maps to {config!r}; valid: a "
                         "QuantConfig or None (keep in float)")

  @property
  def needs_data_init(self) -> bool:
    """Whether some layer initialises state from its input at init time (LSQ activation steps),
    so init should see a real batch rather than a dummy input."""
    return any(c is not None and c.activation is not None and c.activation.data_init
               for _, c in self.rules)

  def config_for(self, module_path: str, role: str | None = None) -> Any | None:
    """The QuantConfig for the op of a `role` weight at `module_path`; None: float."""
    if role in self.keep_float_roles:
      return None
    for pattern, config in self.rules:
      if re.fullmatch(pattern, module_path):
        return config
    return None

  def next_state(self, quant_state: dict, cotangents: dict, path: tuple[str, ...] = ()) -> dict:
    """The QUANT_STATE collection after one train step: each tensor's state (a role key under a
    module path) advanced by its format's `next_state` from d loss / d state (`cotangents`)."""
    config = self.config_for("/".join(path))
    out = {}
    for key, sub in quant_state.items():
      fmt = getattr(config, key) if config is not None and key in ROLES else None
      out[key] = (fmt.next_state(sub, cotangents[key]) if fmt is not None
                  else self.next_state(sub, cotangents[key], path + (key,)))
    return out

  def dot_general(self, module_path: str, role: str | None = None, *,
                  weight_operand: str = "rhs") -> Callable:
    """jax.lax.dot_general, or the quantized one if `config_for` gives a config.
    weight_operand='lhs' for layers that compute W^T x (feature-major Dense)."""
    config = self.config_for(module_path, role)
    if config is None:
      return jax.lax.dot_general
    return quantized_dot_general(config, weight_operand=weight_operand)

  def conv_general_dilated(self, module_path: str, role: str | None = None) -> Callable:
    """jax.lax.conv_general_dilated, or the quantized one (lhs = input, rhs = kernel)."""
    config = self.config_for(module_path, role)
    if config is None:
      return jax.lax.conv_general_dilated
    return quantized_conv_general_dilated(config)


def _integer_policy(name: str, config: QuantConfig) -> QuantPolicy:
  """First layer and readout in float, every other layer with `config`."""
  return QuantPolicy(rules=((r".*", config),), name=name, keep_float_roles=KEEP_FLOAT_ROLES)


_INT8_W = IntFormat(bits=8, granularity="per_channel")
_INT8_A = IntFormat(bits=8, granularity="per_token")
_INT4_W = IntFormat(bits=4, granularity="per_channel")
_FP8 = QuantConfig(weight=FP8Format("e4m3"), activation=FP8Format("e4m3"),
                   gradient=FP8Format("e5m2"))
_FP8_DELAYED = QuantConfig(weight=FP8Format("e4m3", scaling="delayed"),
                           activation=FP8Format("e4m3", scaling="delayed"),
                           gradient=FP8Format("e5m2", scaling="delayed"))

NO_QUANT = QuantPolicy()

_REGISTRY = {
    "fp32": NO_QUANT,
    "none": NO_QUANT,
    "int8": _integer_policy("int8", QuantConfig(weight=_INT8_W, activation=_INT8_A)),
    "int4_w": _integer_policy("int4_w", QuantConfig(weight=_INT4_W)),
    "w4a8": _integer_policy("w4a8", QuantConfig(weight=_INT4_W, activation=_INT8_A)),
    "binary_w": _integer_policy("binary_w", QuantConfig(weight=BinaryFormat(scaled=True))),
    "fp8": QuantPolicy(rules=((r".*", _FP8),), name="fp8"),
    "fp8_delayed": QuantPolicy(rules=((r"embed", _FP8), (r".*", _FP8_DELAYED)),
                               name="fp8_delayed"),
    "lsq_w4a8": _integer_policy("lsq_w4a8", QuantConfig(weight=LSQFormat(bits=4),
                                                        activation=LSQFormat(bits=8))),
}


def names() -> tuple[str, ...]:
  """The registered policy names."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> QuantPolicy:
  """The named policy; UserError (config.quant) listing the valid names for an unknown one."""
  if name not in _REGISTRY:
    raise UserError(f"unknown quantization policy {name!r}; valid: {', '.join(names())}")
  return _REGISTRY[name]
