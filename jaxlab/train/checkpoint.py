"""orbax checkpoints of the train state together with the data iterator state.

Integrity: orbax writes each step to `<step>.orbax-checkpoint-tmp` and renames it when complete,
so a run killed mid-save leaves only a tmp dir, which the manager ignores and deletes
(`cleanup_tmp_directories`). With several processes each writes its own shards and process 0
renames the step only after every process finished (orbax's barrier), so a step that some
processes never finished writing is never restored. Bytes that change on disk after the save
(a truncated or flipped file) are not all caught by orbax (flipped array bytes restore
silently), so each save also stores a fingerprint of the state (wrapping integer sums of its
bits) next to the data state and the restore compares it.

An unreadable newest checkpoint is reported in one warning line, moved to
`<workdir>/checkpoints_corrupt/<step>-<time>` (kept, not deleted) and the run resumes from the
newest readable one. If no checkpoint is readable, nothing is moved and
`NoReadableCheckpointError` stops the run: retraining from scratch silently would hide the loss
(and the cause may be a changed config rather than corrupt files), so the user decides.
"""

import hashlib
import json
import logging as std_logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.train.state import TrainState

FINGERPRINT_KEY = "jaxlab_state_fingerprint"  # stored in the "data" item next to the iterator's
PROCESS_COUNT_KEY = "jaxlab_process_count"  # how many processes wrote the checkpoint
CORRUPT_DIR = "checkpoints_corrupt"


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints exist but none restores (a user-facing error: one line, exit code 2)."""


class _CorruptCheckpoint(ValueError):
  pass


def make_manager(workdir: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict) -> int:
  """Saves the state (every process its shards) and the data iterator's state, which is global
  (jaxlab.data: every host is at the same batch of one global order), so one copy restores under
  any process count; a ValueError if the processes' iterator states differ."""
  step = int(jax.device_get(state.step))
  _check_same_on_every_process(data_state)
  data = dict(data_state, **{FINGERPRINT_KEY: fingerprint(state),
                             PROCESS_COUNT_KEY: jax.process_count()})
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data)), force=True)
  manager.wait_until_finished()
  return step


def restore_latest(manager: ocp.CheckpointManager,
                   like: TrainState) -> tuple[TrainState, Any] | None:
  """(state, data_state) from the newest readable checkpoint, placed like `like`; None if there
  is none. Unreadable newer ones are moved aside with one warning line each."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  failed: list[tuple[int, str]] = []
  previous_hook = _quiet_closed_loop_callbacks()
  for step in steps:
    try:
      state, data_state = _restore(manager, step, abstract)
    except Exception as e:  # noqa: BLE001 (any failure to read a step makes it unreadable)
      failed.append((step, _cause(e)))
      continue
    if not failed:  # no reads left pending
      sys.unraisablehook = previous_hook
    for bad_step, cause in failed:
      _move_aside(manager, bad_step, cause, fallback=step)
    if failed:
      manager.reload()
    return state, data_state
  causes = "; ".join(f"step {s}: {c}" for s, c in failed)
  raise NoReadableCheckpointError(
      f"none of the {len(steps)} checkpoints in {manager.directory} is readable ({causes}); "
      "nothing was moved. If they are corrupt, move that directory aside to train from scratch; "
      "if the config changed the train state's shapes, rerun with the config they were saved "
      "with.")


def _check_same_on_every_process(data_state: dict) -> None:
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(json.dumps(data_state, sort_keys=True, default=str).encode()).digest()
  digests = multihost_utils.process_allgather(np.frombuffer(digest[:16], np.uint32))
  if not (np.asarray(digests) == np.asarray(digests)[0]).all():
    raise ValueError(f"the data iterator's state differs between the {jax.process_count()} "
                     f"processes (this one: {data_state}); a checkpoint holds one global state")


def fingerprint(state: TrainState) -> str:
  """Hex digest of the state's bits: per leaf, the wrapping uint32 sums of its words and of its
  words times their (odd) flat index. Exact under any sharding or reduction order."""
  sums = jax.device_get(_fingerprint_sums(jax.tree.leaves(state)))
  return "".join(f"{int(v):08x}" for v in np.asarray(sums).ravel())


@jax.jit
def _fingerprint_sums(leaves):
  out = []
  for x in leaves:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):  # bool, int: the value is the bits
      words = x.astype(jnp.uint32)
    else:
      if jnp.finfo(x.dtype).bits < 8 or jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = x.astype(jnp.float32) if jnp.isrealobj(x) else jnp.stack([x.real, x.imag], -1)
      uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
      words = jax.lax.bitcast_convert_type(x, uint)
      if words.dtype == jnp.uint64:  # fold the two halves (only with jax_enable_x64)
        words = words ^ (words >> 32)
      words = words.astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(x.ndim)):
      index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride)
      stride *= x.shape[d]
    out.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                          jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)]))
  return jnp.stack(out) if out else jnp.zeros((0, 2), jnp.uint32)


def _restore(manager, step: int, abstract) -> tuple[TrainState, dict]:
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  state, data_state = restored["state"], restored["data"]
  if not isinstance(data_state, dict):
    raise _CorruptCheckpoint(f"the data item is {type(data_state).__name__}, not a JSON object")
  data_state = dict(data_state)
  writers = data_state.pop(PROCESS_COUNT_KEY, 1)
  if writers != jax.process_count():
    logging.info("checkpoint %d was written by %d process(es), restored on %d: the data iterator "
                 "state is global (a batch index), so the data order continues unchanged", step,
                 writers, jax.process_count())
  saved = data_state.pop(FINGERPRINT_KEY, None)
  if saved is not None and saved != (now := fingerprint(state)):
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    changed = [p for i, p in enumerate(paths)
               if saved[16 * i:16 * (i + 1)] != now[16 * i:16 * (i + 1)]]
    raise _CorruptCheckpoint(f"the bytes of {', '.join(changed[:3]) or 'the state'}"
                             f"{' and more' if len(changed) > 3 else ''} changed since the save "
                             "(fingerprint mismatch)")
  return state, data_state


def _cause(e: BaseException) -> str:
  """`Type: first line` of the innermost exception in e's chain (the root cause), bounded."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  line = (str(e).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
  if not isinstance(e, _CorruptCheckpoint):
    line = f"{type(e).__name__}: {line}"
  if len(line) > 300:
    line = line[:297] + "..."
  return line


def _quiet_closed_loop_callbacks():
  """Installs a sys.unraisablehook that drops "RuntimeError: Event loop is closed" and orbax's
  "error while reading array" of abandoned reads (and the asyncio log filter below); returns the
  previous hook. When a restore fails, tensorstore reads still pending complete into orbax's
  closed asyncio loop and print those tracebacks (from tensorstore's threads, as unraisable)."""
  previous = sys.unraisablehook
  if getattr(previous, "_jaxlab_quiet", False):
    return previous

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
            or "error while reading array" in str(e)):
      previous(unraisable)

  hook._jaxlab_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").addFilter(_orphaned_read_filter)
  return previous


def _orphaned_read_filter(record) -> bool:
  """Drops asyncio's "<Task | Future | _GatheringFuture> exception was never retrieved" for
  orbax's array reads of a failed restore (the tasks and futures the failed restore abandoned;
  garbage-collected at any later time, so the filter stays); every other asyncio record
  passes."""
  exc = record.exc_info[1] if record.exc_info else None
  first_line = record.getMessage().partition("\n")[0]
  return not (first_line.endswith(" exception was never retrieved")
              and "error while reading array" in str(exc))


def _move_aside(manager, step: int, cause: str, *, fallback: int) -> None:
  """Moves <checkpoints>/<step> to <workdir>/checkpoints_corrupt/<step>-<time> (process 0)."""
  src = os.path.join(str(manager.directory), str(step))
  dst = os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR,
                     f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    while os.path.exists(dst):
      dst += "x"
    os.rename(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"jaxlab_move_aside_{step}")
  logging.warning("checkpoint at step %d is unreadable (%s): moved %s to %s; resuming from step %d",
                  step, cause, src, dst, fallback)
