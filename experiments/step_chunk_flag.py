"""The --step_chunk flag of the studies that train many small runs (weight_space, pruning_study,
merging_study): how their training steps are compiled (jaxlab.train.step_loops)."""

from absl import flags
import flax.linen as nn
import jax

from jaxlab.train import step_loops

STEP_CHUNK = flags.DEFINE_integer(
    "step_chunk", -1, "0: training steps as one lax.scan (seeds vmapped in one program; fast for "
    "MLPs); N > 0: one run after the other, N unrolled steps per jitted call (conv nets on CPU, "
    "where a scanned or vmapped convolution is slow); -1: 5 where the model convolves on CPU, "
    "else 0")


def step_chunk(model: nn.Module, example: jax.Array) -> int:
  """--step_chunk, with -1 resolved for `model`."""
  if STEP_CHUNK.value >= 0:
    return STEP_CHUNK.value
  return step_loops.default_chunk(model, example)
