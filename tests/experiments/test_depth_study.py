"""experiments.depth_study end to end at toy size on real shakespeare."""

import json

import numpy as np
import pytest

from jaxlab.analysis import plots
from tests.plot_checks import figure_problems, png_problems


def test_depth_study_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.depth_study",
                    "--config=jaxlab/configs/shakespeare_lm.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
                    "--config.data.seq_len=32", "--config.batch_size=4", "--depth=3",
                    "--steps=4", "--warmup_steps=2", "--eval_batch_size=4",
                    "--placements=pre,lns",
                    f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "depth_study.json").read_text())
  assert set(out["results"]) == {"pre", "lns"} and out["depth"] == 3
  assert out["warmup_steps"] == 2
  for r in out["results"].values():
    assert len(r["block_variance"]) == len(r["grad_norms"]) == 3 and len(r["train_loss"]) == 4
    assert np.isfinite(r["val_loss"]) and r["val_loss"] < np.log(256) + 0.5
    assert r["variance_last_first"] == pytest.approx(r["block_variance"][-1]
                                                     / r["block_variance"][0], rel=1e-5)
  # LayerNorm Scaling multiplies block l's norm output by 1/sqrt(l): smaller branch outputs
  assert (out["results"]["lns"]["variance_last_first"]
          < out["results"]["pre"]["variance_last_first"])
  assert "| lns |" in (tmp_path / "depth_study.md").read_text()
  assert png_problems((tmp_path / "depth_study.png").read_bytes()) == []
  best = {key: out["results"][key] for key in out["best_runs"].values()}
  assert figure_problems(plots.depth_profile_figure(best)) == []


def test_depth_study_lr_sweep(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.depth_study",
                    "--config=jaxlab/configs/shakespeare_lm.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
                    "--config.data.seq_len=32", "--config.batch_size=4", "--depth=2",
                    "--steps=6", "--eval_batch_size=4", "--placements=pre,post",
                    "--learning_rates=1e-2,1e-4", f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "depth_study.json").read_text())
  assert out["learning_rates"] == [1e-2, 1e-4]
  assert set(out["results"]) == {"pre@0.01", "pre@0.0001", "post@0.01", "post@0.0001"}
  for key, r in out["results"].items():
    assert key == f"{r['placement']}@{r['learning_rate']:g}"
  # the two LRs really train differently, and the best run is the lower val loss of each pair
  for name in ("pre", "post"):
    hi, lo = out["results"][f"{name}@0.01"], out["results"][f"{name}@0.0001"]
    assert abs(hi["train_loss"][-1] - lo["train_loss"][-1]) > 1e-3
    best = f"{name}@0.01" if hi["val_loss"] < lo["val_loss"] else f"{name}@0.0001"
    assert out["best_runs"][name] == best
  md = (tmp_path / "depth_study.md").read_text()
  assert "| pre | 0.01 |" in md and "| post | 0.0001 |" in md and "| best LR |" in md
  assert png_problems((tmp_path / "depth_study_lr.png").read_bytes()) == []
  assert figure_problems(plots.depth_lr_figure(out["results"])) == []


@pytest.mark.parametrize("flag, message", [
    ("--warmup_steps=5", "--warmup_steps=5 must lie in [0, --steps=4]"),
    ("--learning_rates=3e-3,-1", "--learning_rates=3e-3,-1 must be a comma-separated list of "
     "positive numbers"),
    ("--learning_rates=fast", "--learning_rates=fast must be a comma-separated list")])
def test_depth_study_rejects_bad_flags(run_python, tfds_data_dir, tmp_path, flag, message):
  done = run_python("-m", "experiments.depth_study",
                    "--config=jaxlab/configs/shakespeare_lm.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
                    "--config.data.seq_len=32", "--config.batch_size=4", "--depth=2",
                    "--steps=4", flag, f"--workdir={tmp_path}")
  assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
