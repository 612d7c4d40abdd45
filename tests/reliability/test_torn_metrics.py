"""Issue 15 item 4: a half-written metrics.jsonl row (SIGKILL mid-write, a node crash, a full
disk) no longer breaks resume or analysis: readers skip it with one warning line, the writer drops
it (and the rows past the resumed step) on resume, so each step appears once. An unreadable line
in the middle is skipped and dropped the same way, the warning naming its line number.
"""

import json
import logging
import signal

import pytest

from jaxlab.train.metrics import MetricsWriter, read_metrics
from tests.tiny_runs import train


def rows_text(steps):
  return "".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in steps)


def warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_read_metrics_skips_a_torn_last_line_with_one_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(rows_text([1, 2, 3]) + '{"step": 4, "train/lo')
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
  [message] = warnings(caplog)
  assert f"{path}: ignoring its torn last line 4" in message and "\n" not in message
  assert path.read_text().endswith('"train/lo')  # reading never modifies the file


def test_read_metrics_skips_a_corrupt_middle_line_naming_it(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(rows_text([1]) + "{garbage\n" + rows_text([2]) + "[1, 2]\n" + rows_text([3]))
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
  [message] = warnings(caplog)
  assert f"{path}: ignoring 2 unreadable lines: 2, 4 (first: JSONDecodeError" in message


def test_writer_on_resume_drops_the_torn_line_and_later_rows(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(rows_text(range(1, 24)) + '{"step": 24, "train/loss": 0.')
  with caplog.at_level(logging.WARNING):
    writer = MetricsWriter(str(tmp_path), resume_step=20)
  [message] = warnings(caplog)
  assert "torn last line 24" in message and "rewriting the file without them" in message
  assert path.read_text() == rows_text(range(1, 21))  # truncated to complete rows <= 20
  writer.write(21, {"train/loss": 0.5})
  assert [r["step"] for r in read_metrics(path)] == list(range(1, 22))


def test_writer_completes_a_last_row_that_lacks_only_its_newline(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(rows_text([1, 2]).rstrip("\n"))
  with caplog.at_level(logging.WARNING):
    writer = MetricsWriter(str(tmp_path), resume_step=2)
  assert not warnings(caplog)
  writer.write(3, {"train/loss": 0.5})
  assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


# Runs experiments.train, but at step KILL_AT writes half of the metrics row and SIGKILLs itself
# (a crash mid-write, 4 steps after the checkpoint at step 20).
KILLER = """
import json, os, signal, sys
from absl import app
from jaxlab.train import metrics
from experiments import train
write = metrics.MetricsWriter.write
def write_half_then_die(self, step, row):
  if step != int(os.environ["KILL_AT"]):
    return write(self, step, row)
  line = json.dumps({"step": step, **{k: float(v) for k, v in row.items()}})
  with open(self.path, "a") as f:
    f.write(line[:len(line) // 2])
  os.kill(os.getpid(), signal.SIGKILL)
metrics.MetricsWriter.write = write_half_then_die
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


def losses(workdir):
  return [(r["step"], r["train/loss"]) for r in read_metrics(workdir / "metrics.jsonl")]


@pytest.mark.parametrize("kill_at", [24])
def test_sigkill_mid_row_then_resume_has_each_step_once_and_is_bitwise(kill_at, tmp_path,
                                                                       tfds_data_dir):
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  done = train(tfds_data_dir, straight)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = train(tfds_data_dir, crashed, "-c", KILLER, env={"KILL_AT": str(kill_at)})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  text = (crashed / "metrics.jsonl").read_text()
  assert not text.endswith("\n") and text.count("\n") == kill_at - 1  # a torn last row

  resumed = train(tfds_data_dir, crashed)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Traceback" not in resumed.stderr
  [line] = [ln for ln in resumed.stderr.splitlines() if "torn last line" in ln]
  assert line.startswith("W") and f"torn last line {kill_at}" in line
  assert "resumed from checkpoint at step 20" in resumed.stderr
  assert [s for s, _ in losses(crashed)] == list(range(1, 41))  # each step once
  assert losses(crashed) == losses(straight)  # bitwise
  assert (crashed / "metrics.jsonl").read_text().endswith("\n")
