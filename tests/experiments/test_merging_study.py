"""experiments.merging_study end to end at toy size on real digits."""

import json


def test_merging_study_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.merging_study", "--config=jaxlab/configs/digits_mlp.py",
                    f"--config.data.data_dir={tfds_data_dir}", "--base_steps=80",
                    "--finetune_steps=60", "--val_examples=200", f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads((tmp_path / "merging_study.json").read_text())["rows"]
  assert set(rows) >= {"base", "fine-tune 0-4", "fine-tune 5-9", "uniform soup", "greedy soup",
                       "task arithmetic", "TIES (density 0.2)", "LiNeS",
                       "DARE (p 0.9) + task arithmetic"}
  # each fine-tune forgets the other half (catastrophic forgetting)...
  assert rows["fine-tune 0-4"]["5-9"] < 0.3 < rows["fine-tune 0-4"]["0-4"]
  assert rows["fine-tune 5-9"]["0-4"] < 0.3 < rows["fine-tune 5-9"]["5-9"]
  # ...and merging them recovers both halves better than either fine-tune alone
  for name in ("uniform soup", "task arithmetic", "TIES (density 0.2)"):
    assert rows[name]["all"] > max(rows["fine-tune 0-4"]["all"], rows["fine-tune 5-9"]["all"])
  assert rows["task arithmetic"]["hyper"][0] in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3)
