"""The quantization state a layer owns, and the variables a model is applied with.

A jaxlab Dense / Conv calls `quant_inputs(self, x, kernel)`: each format of its QuantConfig
declares the state it needs (`Format.declare_state`: LSQ steps as params, fp8 delayed-scaling
histories in the QUANT_STATE collection) and the layer passes it to the quantized op. The train
state carries the QUANT_STATE collection in TrainState.extra[QUANT_STATE]; `model_variables`
builds the apply variables from (params, extra), and the policy advances the state after a step
(`QuantPolicy.next_state`).
"""

from typing import Any

import flax.linen as nn
import jax

from jaxlab.quant.config import ROLES
from jaxlab.quant.formats import QUANT_STATE
from jaxlab.quant.policy import module_path


def quant_inputs(module: nn.Module, x: jax.Array, kernel: jax.Array) -> dict[str, Any]:
  """Keyword arguments for the quantized op at `module`'s path (`module_path`) for
  its parameter role `module.role`: quant_state={role: state} for the formats that declare state
  ('weight' reads `kernel`, 'activation' `x`), created on first use; {} when there is none."""
  config = module.ctx.quant.config_for(module_path(module), module.role)
  if config is None:
    return {}
  values = {"weight": kernel, "activation": x, "gradient": None}
  states = {}
  for role in ROLES:
    fmt = getattr(config, role)
    state = None if fmt is None else fmt.declare_state(module, role, values[role])
    if state is not None:
      states[role] = state
  return {"quant_state": states} if states else {}


def model_variables(params: Any, extra: dict | None) -> dict:
  """{'params': params} plus extra's quantization state (if any): what a model is applied
  with (`extra`: TrainState.extra or None)."""
  variables = {"params": params}
  if extra and extra.get(QUANT_STATE) is not None:
    variables[QUANT_STATE] = extra[QUANT_STATE]
  return variables
