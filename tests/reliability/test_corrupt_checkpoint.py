"""Issue 15 item 2: corrupt checkpoints and kill -9 mid-save, through the real launcher.

An unreadable newest checkpoint (truncated / flipped / missing file, bad JSON data item) gives one
warning line, is moved to <workdir>/checkpoints_corrupt/ and the run resumes from the newest
readable one, bit-identically to an uninterrupted run. No readable checkpoint: one error line,
exit 2, nothing moved. A SIGKILL during a save leaves only orbax's tmp dir, which a rerun ignores
(and removes) and resumes from the previous checkpoint, bit-identically.
"""

import glob
import json
import os
import shutil
import signal

import pytest

from jaxlab.train.metrics import read_metrics
from tests.tiny_runs import train

WARNING = "is unreadable"


@pytest.fixture(scope="module")
def straight(tfds_data_dir, tmp_path_factory):
  """An uninterrupted 40-step run (checkpoints 20, 40): the reference, and the run to corrupt."""
  workdir = tmp_path_factory.mktemp("straight") / "w"
  done = train(tfds_data_dir, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
  return workdir


def losses(workdir):
  return [(r["step"], r["train/loss"]) for r in read_metrics(workdir / "metrics.jsonl")]


def saved_data_item(workdir, step):
  """The data item of a checkpoint: iterator position and the state's bit fingerprint."""
  with open(workdir / "checkpoints" / str(step) / "data" / "metadata") as f:
    return json.load(f)


def assert_matches_straight(workdir, straight):
  """Each step once in metrics.jsonl, bitwise equal losses, and a bitwise equal final state."""
  assert losses(workdir) == losses(straight)
  assert [s for s, _ in losses(workdir)] == list(range(1, 41))
  assert saved_data_item(workdir, 40) == saved_data_item(straight, 40)


def largest_array_file(step_dir):
  return max(glob.glob(f"{step_dir}/state/**/d/*", recursive=True), key=os.path.getsize)


def truncate(step_dir):
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def flip_bytes(step_dir):  # orbax restores these silently: only the fingerprint catches it
  path = largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(64)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def bad_json(step_dir):
  with open(f"{step_dir}/data/metadata", "w") as f:
    f.write('{"next_index": 4')


def missing_files(step_dir):
  for path in glob.glob(f"{step_dir}/state/**/manifest.ocdbt", recursive=True):
    os.remove(path)


@pytest.mark.parametrize("corrupt", [truncate, flip_bytes, bad_json, missing_files],
                         ids=lambda f: f.__name__)
def test_corrupt_newest_checkpoint_falls_back_and_is_moved_aside(corrupt, straight, tmp_path,
                                                                 tfds_data_dir):
  workdir = tmp_path / "w"
  shutil.copytree(straight, workdir)
  corrupt(workdir / "checkpoints" / "40")
  run = train(tfds_data_dir, workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  [line] = [ln for ln in run.stderr.splitlines() if WARNING in ln]
  assert line.startswith("W") and "checkpoint at step 40 is unreadable" in line
  assert f"{workdir}/checkpoints/40" in line and "resuming from step 20" in line
  assert "resumed from checkpoint at step 20" in run.stderr
  [moved] = os.listdir(workdir / "checkpoints_corrupt")
  assert moved.startswith("40-") and moved in line
  assert os.path.isdir(workdir / "checkpoints_corrupt" / moved / "state")  # kept, not deleted
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]  # 40: saved again
  assert_matches_straight(workdir, straight)


def test_no_readable_checkpoint_exits_2_with_one_line_and_moves_nothing(straight, tmp_path,
                                                                        tfds_data_dir):
  workdir = tmp_path / "w"
  shutil.copytree(straight, workdir)
  bad_json(workdir / "checkpoints" / "40")
  truncate(workdir / "checkpoints" / "20")
  run = train(tfds_data_dir, workdir)
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  [line] = [ln for ln in run.stderr.splitlines() if ln.startswith(("E", "F"))]
  assert "none of the 2 checkpoints" in line and "step 40: JSONDecodeError" in line
  assert "step 20: " in line and "nothing was moved" in line
  assert not [ln for ln in run.stderr.splitlines() if WARNING in ln]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
  assert not os.path.exists(workdir / "checkpoints_corrupt")
  assert losses(workdir) == losses(straight)  # metrics untouched


# Runs experiments.train, but SIGKILLs itself in the middle of the save of step KILL_AT: right
# after orbax created the step's tmp dir ("create"), or with everything written but before the
# tmp dir is renamed to its final name ("finalize").
KILLER = """
import os, signal, sys
from absl import app
from orbax.checkpoint._src.path import atomicity
from experiments import train
cls = atomicity.AtomicRenameTemporaryPath
where, kill_at = os.environ["KILL_IN"], os.environ["KILL_AT"]
original = getattr(cls, where)
async def then_die(self, *args, **kwargs):
  out = await original(self, *args, **kwargs) if where == "create" else None
  if self.get_final().name == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
  return out if where == "create" else await original(self, *args, **kwargs)
setattr(cls, where, then_die)
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


@pytest.mark.parametrize("kill_in", ["create", "finalize"])
def test_sigkill_mid_save_leaves_nothing_restorable_and_resume_is_bitwise(kill_in, straight,
                                                                          tmp_path, tfds_data_dir):
  workdir = tmp_path / "w"
  killed = train(tfds_data_dir, workdir, "-c", KILLER, env={"KILL_IN": kill_in, "KILL_AT": "40"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  left = sorted(os.listdir(workdir / "checkpoints"))
  assert left[0] == "20" and len(left) == 2 and left[1].startswith("40.orbax-checkpoint-tmp"), left
  resumed = train(tfds_data_dir, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint at step 20" in resumed.stderr
  assert WARNING not in resumed.stderr and "Traceback" not in resumed.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]  # the tmp dir is gone
  assert_matches_straight(workdir, straight)


FINGERPRINT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxlab.train import checkpoint
tree = {"w": jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6) / 7, "b": jnp.ones(6, jnp.bfloat16),
        "count": jnp.int32(3), "rng": jax.random.PRNGKey(0)}
mesh = jax.make_mesh((jax.device_count(),), ("d",))
sharded = dict(tree, w=jax.device_put(tree["w"], NamedSharding(mesh, P("d", None))))
flipped = dict(tree, w=tree["w"].at[3, 2].set(jnp.nextafter(tree["w"][3, 2], 9.0)))
swapped = dict(tree, w=tree["w"][::-1])
print(json.dumps({"n": jax.device_count(), "plain": checkpoint.fingerprint(tree),
                  "sharded": checkpoint.fingerprint(sharded),
                  "flipped": checkpoint.fingerprint(flipped),
                  "swapped": checkpoint.fingerprint(swapped)}))
"""


def test_state_fingerprint_is_exact_under_sharding_and_sees_one_ulp(run_python):
  """The fingerprint that catches flipped bytes is the same for any sharding (a resume on another
  device count), and changes with one ulp of one element or a permutation."""
  out = {}
  for n in (1, 8):
    done = run_python("-c", FINGERPRINT,
                      env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
    assert done.returncode == 0, done.stderr[-3000:]
    out[n] = json.loads(done.stdout.strip().splitlines()[-1])
  assert out[8]["n"] == 8
  assert out[1]["plain"] == out[1]["sharded"] == out[8]["plain"] == out[8]["sharded"]
  assert out[1]["flipped"] == out[8]["flipped"] != out[1]["plain"]
  assert out[1]["swapped"] not in (out[1]["plain"], out[1]["flipped"])
