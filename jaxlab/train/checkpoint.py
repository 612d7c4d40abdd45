"""orbax checkpoints of the train state together with the data iterator state."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlab.train.state import TrainState


def make_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict) -> int:
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)), force=True)
  manager.wait_until_finished()
  return step


def restore_latest(manager: ocp.CheckpointManager, like: TrainState) -> tuple[TrainState, Any] | None:
  """(state, data_state) from the newest checkpoint, placed like `like`; None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]
