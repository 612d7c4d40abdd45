"""metrics.jsonl: one JSON object per logged step, e.g. {"step": 100, "train/loss": 0.3}.

A crash mid-write (SIGKILL, a node failure, a full disk) can leave a torn last line: readers
skip it with one warning line, and the writer, on resume, rewrites the file (atomically) without
it. An unreadable line elsewhere (not from a crash of this writer, which only appends; e.g. a
hand edit or disk damage) is treated the same way: skipped and dropped with the warning naming
its line number, rather than failing every resume and every analysis of the run.
"""

import json
import math
import os
from typing import Any

from absl import logging


class MetricsWriter:
  """Appends to <workdir>/metrics.jsonl. On resume, rows past the restored step are dropped,
  since those steps are about to be recomputed, and unreadable (torn) lines are dropped too."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if enabled and os.path.exists(self.path):
      rows, bad = _read(self.path)
      if bad:
        logging.warning("%s; rewriting the file without them", _describe(self.path, bad))
      kept = [r for r in rows if r["step"] <= resume_step]
      if bad or len(kept) < len(rows) or not _ends_with_newline(self.path):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
          f.writelines(json.dumps(r) + "\n" for r in kept)
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, self.path)  # a crash here leaves the old file or the new one, never half

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _jsonable(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def _jsonable(v: Any) -> Any:
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The rows of a metrics.jsonl; unreadable lines (a torn last line after a crash) are skipped
  with one warning line naming the file and their line numbers."""
  rows, bad = _read(path)
  if bad:
    logging.warning("%s", _describe(path, bad))
  return rows


def _read(path) -> tuple[list[dict], list[tuple[int, str, bool]]]:
  """(rows, [(line number, cause, is_last_line)]) of a metrics.jsonl."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  rows, bad = [], []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
        raise ValueError("not a JSON object with an integer 'step'")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      bad.append((i + 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  i == last))
      continue
    rows.append(row)
  return rows, bad


def _describe(path, bad: list[tuple[int, str, bool]]) -> str:
  if len(bad) == 1 and bad[0][2]:
    return (f"{path}: ignoring its torn last line {bad[0][0]} (a row half-written by a crash; "
            f"{bad[0][1]})")
  where = ", ".join(f"{n}{' (last)' if is_last else ''}" for n, _, is_last in bad[:10])
  more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
  return (f"{path}: ignoring {len(bad)} unreadable lines: {where}{more} (first: {bad[0][1]})")


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"
