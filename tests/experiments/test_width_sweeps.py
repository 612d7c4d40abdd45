"""The width-sweep launchers end to end at toy size on real digits: files written, numbers sane."""

import json

from jaxlab.analysis import plots
from tests.plot_checks import figure_problems, png_problems


def test_coord_check_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.coord_check", "--config=jaxlab/configs/digits_mlp.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--widths=16,64",
                    "--base_width=16", "--steps=2", "--lr=1e-3", f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "coord_check.json").read_text())
  results = out["results"]
  assert out["parametrizations"]["mup"]["64"]["wd_convention"] == "independent"
  assert out["parametrizations"]["mup"]["64"]["width"] == 64
  assert set(results) == {"sp", "mup"} and set(results["mup"]) == {"16", "64"}
  assert len(results["mup"]["64"]) == 3 and "logits" in results["mup"]["64"][0]
  assert results["mup"]["16"] == results["sp"]["16"]  # base width: identical runs
  assert png_problems((tmp_path / "coord_check.png").read_bytes()) == []
  assert figure_problems(plots.coord_check_figure(results)) == []
  assert "mup: mean|x| ratio width 64/16 at step 2" in done.stdout


def test_lr_transfer_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.lr_transfer", "--config=jaxlab/configs/digits_mlp.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--widths=16,32",
                    "--base_width=16", "--log2_lrs=-10,-4", "--steps=20", "--seeds=2",
                    f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "lr_transfer.json").read_text())
  r = out["results"]["mup"]["32"]
  assert r["log2_lr"] == list(range(-10, -3)) and len(r["eval_loss"]) == 7
  assert all(len(per_seed) == 2 for per_seed in r["eval_loss"])
  assert -10 <= r["best_log2_lr"] <= -4
  assert out["timing"]["num_lrs"] == 7 and out["timing"]["speedup"] > 0
  assert out["seeds"] == [0, 1]
  mup16, sp16 = out["results"]["mup"]["16"], out["results"]["sp"]["16"]
  assert mup16 == {**sp16, "seconds": mup16["seconds"], "param": mup16["param"]}
  assert mup16["param"]["name"] == "mup" and mup16["param"]["wd_convention"] == "independent"
  assert png_problems((tmp_path / "lr_transfer.png").read_bytes()) == []
  assert figure_problems(plots.lr_transfer_figure(out["results"], out["axis"])) == []


def test_lr_transfer_depth_cli(run_python, tfds_data_dir, tmp_path):
  """--depths sweeps the LM's depth at fixed width; depth-muP at its base depth is plain muP."""
  done = run_python("-m", "experiments.lr_transfer",
                    "--config=jaxlab/configs/shakespeare_lm.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
                    "--config.data.seq_len=32", "--config.batch_size=4",
                    "--config.eval_batch_size=4",
                    "--depths=1,2", "--base_depth=1", "--base_width=32",
                    "--parametrizations=mup,depth_mup", "--log2_lrs=-8,-6", "--steps=4",
                    "--first_seed=3", "--time_sequential=false", f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "lr_transfer.json").read_text())
  assert out["axis"] == "depth" and set(out["results"]["depth_mup"]) == {"1", "2"}
  assert out["seeds"] == [3]
  base_mup, base_dmup = out["results"]["mup"]["1"], out["results"]["depth_mup"]["1"]
  assert base_mup["eval_loss"] == base_dmup["eval_loss"]  # L = L_base: identical runs
  assert out["results"]["mup"]["2"]["eval_loss"] != out["results"]["depth_mup"]["2"]["eval_loss"]
  assert "depth_mup depth 2: best log2 LR" in done.stdout
