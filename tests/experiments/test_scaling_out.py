"""experiments.scaling_out end to end at toy size: both layouts train the same run."""

import json


def test_scaling_out_cli(run_python, tfds_data_dir, tmp_path):
  done = run_python("-m", "experiments.scaling_out", "--config=jaxlab/configs/digits_mlp.py",
                    "--processes=1,2", "--steps=6", f"--workdir={tmp_path}",
                    f"--overrides=--config.data.data_dir={tfds_data_dir}")
  assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
  out = json.loads((tmp_path / "scaling_out.json").read_text())
  assert [r["n"] for r in out["rows"]] == [1, 2]
  for r in out["rows"]:
    assert r["processes_step_s"] > 0 and r["devices_step_s"] > 0
    assert abs(r["processes_loss"] - r["devices_loss"]) <= 1e-5 * abs(r["devices_loss"])
  assert "| 2 |" in done.stdout
