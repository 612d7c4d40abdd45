"""The absl launcher's error paths: unknown config keys and datasets that are not prepared."""

import time


def test_unknown_config_key_is_named(run_python):
  done = run_python("-m", "experiments.train", "--config=jaxlab/configs/mnist5k_mlp.py",
                    "--workdir=/tmp/unused", "--config.optim.lr=0.1")
  assert done.returncode == 2
  assert "unknown config key 'optim.lr'" in done.stderr and "learning_rate" in done.stderr


def test_missing_tfds_dataset_fails_fast_naming_it(run_python, tmp_path):
  start = time.time()
  done = run_python("-m", "experiments.train", "--config=jaxlab/configs/mnist5k_mlp.py",
                    f"--workdir={tmp_path / 'w'}", "--config.data.name=mnist",
                    env={"TFDS_DATA_DIR": str(tmp_path / "empty")})
  elapsed = time.time() - start
  assert done.returncode != 0
  assert elapsed < 10, elapsed
  assert "'mnist'" in done.stderr and "TFDS_DATA_DIR" in done.stderr
