"""experiments.depth_study end to end at toy size on real shakespeare."""

import json

import numpy as np
import pytest


def test_depth_study_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.depth_study",
                    "--config=experiments/configs/shakespeare_lm.py",
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
  assert (tmp_path / "depth_study.png").stat().st_size > 10_000


def test_depth_study_rejects_warmup_longer_than_run(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.depth_study",
                    "--config=experiments/configs/shakespeare_lm.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
                    "--config.data.seq_len=32", "--config.batch_size=4", "--depth=2",
                    "--steps=4", "--warmup_steps=5", f"--workdir={tmp_path}")
  assert done.returncode != 0 and "--warmup_steps=5 must lie in [0, --steps=4]" in done.stderr
