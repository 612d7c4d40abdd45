"""The train state: everything a checkpoint must hold to resume bit-exactly."""

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  # {} for float runs; {'quant_state': ...} with fp8 delayed scaling (the amax histories of the
  # 'quant_state' collection, jaxlab.quant.fp8), saved in checkpoints with the rest
  extra: Any = struct.field(default_factory=dict)
