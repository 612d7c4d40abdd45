"""The workdir as a record of how its checkpoints were trained, and a lock against a second run.

Files (written by process 0 only):
  config.json         the config in force now; written only once every start-up check passed.
  parametrization.json  every field of the resolved parametrization (jaxlab.param.describe:
                      name, width, depth and the options in force, defaults included, e.g.
                      muP's wd_convention), written with config.json.
  config.<step>.json  the config that was in force up to checkpoint <step>, kept when a resume
                      from <step> changed a recorded key (see below).
  metrics.jsonl       gets a row {"step": <step>, "config_change": [keys]} at such a resume.
  .lock               flock'ed by the running process, holding {"pid": ..., "host": ...}.

Resuming (a checkpoint exists) compares the new config with the one in force at the newest
checkpoint. Keys are dotted paths ("optim.learning_rate"). Three kinds:
  FREE_KEYS     no effect on the trained function or the data order: they may change silently
                (logging / eval / checkpoint cadence, eval batch size, data location, the mesh:
                every mesh computes the same run; the divergence guard only decides when to
                stop). config.json takes the new values.
  num_steps     may be raised silently (the common "train longer"). It sets the length of the LR
                schedule, so the change is versioned and marked like an allowed one; lowering it
                needs --allow_config_change=num_steps.
  anything else (model.*, param.* (the parametrization), quant, optim.*, data.*, seed,
                batch_size, eval_split / eval_max_batches, keys added or removed): a change stops
                the run with a ConfigDriftError listing `key: old -> new`, unless the key (or a
                parent, e.g. "optim") is in allow_config_change.
Deciding by a list of free keys, not of guarded ones, means a key added to the configs later is
guarded until someone decides otherwise.
"""

import fcntl
import json
import os
import re
import socket
from typing import Any, Iterable, Mapping

from absl import logging

CONFIG = "config.json"
PARAMETRIZATION = "parametrization.json"
LOCK = ".lock"
FREE_KEYS = ("log_every", "eval_every", "stats_every", "checkpoint_every", "max_to_keep",
             "depth_metrics_every", "eval_batch_size", "data.data_dir", "mesh", "divergence")
RAISE_ONLY_KEYS = ("num_steps",)
_VERSION = re.compile(r"config\.(\d+)\.json")
_ABSENT = "<absent>"


class WorkdirError(ValueError):
  """A user-caused workdir problem (config drift, a locked workdir); the CLI prints one line."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"optim": {"lr": 1}} -> {"optim.lr": 1}; leaves are JSON values (tuples become lists)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old, new)} for every leaf that differs; a missing side is "<absent>"."""
  a, b = flatten(old), flatten(new)
  return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys())
          if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _under(key: str, names: Iterable[str]) -> bool:
  return any(key == n or key.startswith(n + ".") for n in names)


def recorded_changes(changes: Mapping[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
  """The changes that go on the record (versioned config, metrics marker): all but FREE_KEYS."""
  return {k: v for k, v in changes.items() if not _under(k, FREE_KEYS)}


def is_allowed_silently(key: str, old: Any, new: Any) -> bool:
  if _under(key, FREE_KEYS):
    return True
  return (key in RAISE_ONLY_KEYS and isinstance(old, int) and isinstance(new, int)
          and new >= old)


def _show(value: Any) -> str:
  return value if value == _ABSENT else json.dumps(value)


def format_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
  return ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())


def config_dict(config) -> dict[str, Any]:
  """A ConfigDict as the plain JSON dict that config.json holds."""
  return json.loads(config.to_json())


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints (orbax renames a step's dir into place when it is done)."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def config_versions(workdir: str) -> dict[int, str]:
  """{step: path} of the config.<step>.json files."""
  return {int(m.group(1)): os.path.join(workdir, n) for n in os.listdir(workdir)
          if (m := _VERSION.fullmatch(n))}


def config_in_force(workdir: str, step: int) -> tuple[dict[str, Any] | None, str]:
  """(config, path) that trained the checkpoint at `step`: config.<t>.json for the smallest
  version t >= step, else config.json; (None, path) if the workdir has no config record."""
  later = [t for t in config_versions(workdir) if t >= step]
  path = os.path.join(workdir, f"config.{min(later)}.json" if later else CONFIG)
  if not os.path.exists(path):
    return None, path
  with open(path) as f:
    return json.load(f), path


def check_resume(workdir: str, new: Mapping[str, Any], step: int,
                 allow: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
  """Changes on the record when resuming from the checkpoint at `step` with config `new`.

  Raises WorkdirError naming every change that is neither free nor in `allow`.
  """
  allow = [a.strip() for a in allow if a.strip()]
  old, path = config_in_force(workdir, step)
  if old is None:
    logging.warning("%s is missing: resuming from step %d without a config to compare with",
                    path, step)
    return {}
  changes = diff(old, new)
  refused = {k: v for k, v in changes.items()
             if not is_allowed_silently(k, *v) and not _under(k, allow)}
  if refused:
    keys = ",".join(refused)
    raise WorkdirError(
        f"config differs from {path}, which trained the checkpoint at step {step}: "
        f"{format_changes(refused)}. Rerun with the recorded values, use a new --workdir, or pass"
        f" --allow_config_change={keys} to continue from step {step} with the new values")
  unused = [a for a in allow if not any(_under(k, [a]) for k in changes)]
  if unused:  # not an error: rerunning the command that made the change must still resume
    logging.warning("--allow_config_change: %s did not change since step %d (changed keys: %s)",
                    ", ".join(unused), step, ", ".join(changes) or "none")
  return recorded_changes(changes)


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def record_parametrization(workdir: str, described: Mapping[str, Any]) -> None:
  """Writes parametrization.json (`jaxlab.param.describe` of the model's parametrization)."""
  _write_atomic(os.path.join(workdir, PARAMETRIZATION), json.dumps(described, indent=1))


def record_config(workdir: str, config_json: str, step: int,
                  changes: Mapping[str, tuple[Any, Any]]) -> None:
  """Writes config.json for a run starting at `step` (0: from scratch).

  With recorded `changes` at a resume, the config.json in force up to `step` is kept as
  config.<step>.json first and metrics.jsonl gets a {"step", "config_change"} row. From scratch,
  config.<step>.json files of an earlier record are removed (like its metrics rows).
  """
  path = os.path.join(workdir, CONFIG)
  if step == 0:
    for old in config_versions(workdir).values():
      logging.warning("starting from scratch: removing %s of an earlier run", old)
      os.remove(old)
  elif changes:
    version = os.path.join(workdir, f"config.{step}.json")
    if not os.path.exists(version) and os.path.exists(path):  # else: kept by an earlier change
      with open(path) as f:
        _write_atomic(version, f.read())
    _mark_metrics(workdir, step, sorted(changes))
    logging.warning("config changed at step %d: %s; the previous config is %s", step,
                    format_changes(changes), version)
  _write_atomic(path, config_json)


def _mark_metrics(workdir: str, step: int, keys: list[str]) -> None:
  """Appends the marker row, replacing one at the same step (left by a run that resumed from
  `step` with another change and stopped before its next checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  lines = []
  if os.path.exists(path):
    with open(path) as f:
      lines = f.readlines()
  kept = [line for line in lines if not _is_marker(line, step)]
  if len(kept) < len(lines):
    _write_atomic(path, "".join(kept))
  with open(path, "a") as f:
    f.write(json.dumps({"step": step, "config_change": keys}) + "\n")


def _is_marker(line: str, step: int) -> bool:
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return False
  return isinstance(row, dict) and row.get("step") == step and "config_change" in row


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """An exclusive fcntl.flock on <workdir>/.lock, which holds {"pid", "host"} of the holder.

  The kernel drops the flock when the holder dies (even by SIGKILL), so a held flock means a live
  run; the file's content only names it. A lock file naming a process that is gone (a crash) is
  taken over with a warning. release() empties the file and unlocks; the file stays (deleting it
  would race with a run that opened it).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot create the lock file {self.path}: {e.strerror}; --workdir must"
                         " be a writable directory") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirError(
          f"workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid', '?')} on "
          f"host {holder.get('host', '?')} (it holds {self.path}); wait for that run to finish "
          "or stop it, or use another --workdir") from None
    holder, host = _read_holder(fd), socket.gethostname()
    if holder.get("pid") not in (None, os.getpid()):
      pid, other_host = holder["pid"], holder.get("host", "?")
      if other_host == host and _pid_alive(pid):
        os.close(fd)
        raise WorkdirError(
            f"{self.path} names pid {pid} on this host ({host}), which is running but holds no "
            "lock on it: if that process is not a jaxlab run on this workdir, delete the file")
      logging.warning("taking over the stale lock %s of pid %s on host %s (%s)", self.path, pid,
                      other_host, "not running" if other_host == host else "lock not held")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": host}) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)  # closing drops the flock

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> dict[str, Any]:
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}
