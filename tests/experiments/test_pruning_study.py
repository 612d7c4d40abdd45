"""experiments.pruning_study end to end at toy size on real digits."""

import json

from jaxlab.analysis import plots
from tests.plot_checks import figure_problems, png_problems


def test_pruning_study_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.pruning_study", "--config=jaxlab/configs/digits_mlp.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--steps=150",
                    "--finetune_steps=20", "--sparsities=0,0.5,0.95", f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads((tmp_path / "pruning_study.json").read_text())["results"]
  dense = out["dense"]["accuracy"]
  assert dense > 0.8
  assert sorted(out["methods"]) == ["magnitude_global", "magnitude_layerwise", "structured"]
  for method, rows in out["methods"].items():
    assert [r["sparsity"] for r in rows] == [0.0, 0.5, 0.95]
    assert rows[0]["accuracy"] == dense and rows[0]["pruned_fraction"] == 0
    # the kernels hold nearly all parameters: the pruned fraction follows the sparsity
    assert 0.4 < rows[1]["pruned_fraction"] < 0.5 and 0.8 < rows[2]["pruned_fraction"] < 0.95
    assert rows[2]["accuracy"] < dense - 0.05, method  # 95% of the weights gone hurts
  assert png_problems((tmp_path / "pruning_study.png").read_bytes()) == []
  assert figure_problems(plots.pruning_figure(out, "digits")) == []
