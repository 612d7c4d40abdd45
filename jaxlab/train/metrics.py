"""metrics.jsonl: one JSON object per logged step, e.g. {"step": 100, "train/loss": 0.3}."""

import json
import math
import os
from typing import Any


class MetricsWriter:
  """Appends to <workdir>/metrics.jsonl. On resume, rows past the restored step are dropped,
  since those steps are about to be recomputed."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if enabled and os.path.exists(self.path):
      kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)

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


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
