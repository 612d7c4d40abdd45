"""The train state: everything a checkpoint must hold to resume bit-exactly."""

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 PRNG key (jax.random.PRNGKey), folded with the step per update
  extra: Any = struct.field(default_factory=dict)  # e.g. fp8 amax histories (later issues)
