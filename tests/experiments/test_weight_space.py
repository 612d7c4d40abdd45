"""experiments.weight_space end to end at toy size on real mnist5k digits."""

import json

from jaxlab.analysis import plots
from tests.plot_checks import figure_problems, png_problems


def test_weight_space_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.weight_space", "--config=jaxlab/configs/mnist5k_mlp.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--widths=32,64", "--pairs=2",
                    "--steps=60", "--stats_examples=256",
                    "--methods=naive,weight,activation,weight_repair", "--landscape_points=5",
                    f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "weight_space.json").read_text())
  assert sorted(out["results"], key=int) == ["32", "64"]
  for width, r in out["results"].items():
    assert r["groups"] == {"dense_0": int(width), "dense_1": int(width)}
    assert len(r["pairs"]) == 2 and r["summary"]["naive"]["n"] == 2
    for pair in r["pairs"]:
      for method, curve in pair.items():
        assert len(curve["lam"]) == 25 == len(curve["loss"])
        assert curve["barrier_loss"] >= 0
      # the endpoints are the trained models, whatever the alignment
      assert abs(pair["weight"]["loss"][0] - pair["naive"]["loss"][0]) < 1e-5
      assert abs(pair["weight"]["loss"][-1] - pair["naive"]["loss"][-1]) < 1e-4
      # Git Re-Basin's central claim at its smallest: matching lowers the barrier
      assert pair["weight"]["barrier_loss"] < pair["naive"]["barrier_loss"]
  assert png_problems((tmp_path / "weight_space.png").read_bytes()) == []
  land = json.loads((tmp_path / "weight_space.json").read_text())["landscape"]
  assert land["width"] == 64 and len(land["test_loss"]) == 5 == len(land["test_loss"][0])
  centre = land["test_loss"][2][2]  # alpha = beta = 0: model A itself
  assert abs(centre - out["results"]["64"]["pairs"][0]["naive"]["loss"][0]) < 1e-4
  assert png_problems((tmp_path / "weight_space_landscape.png").read_bytes()) == []
  assert figure_problems(plots.barrier_figure(
      {int(w): r for w, r in out["results"].items()})) == []
