"""Issue 15 item 11: a scalar for a tuple-valued key, the first ETA, the dataset info loads."""

import io
import os
import time

import pytest

from experiments import config_overrides
from jaxlab.configs import mnist5k_mlp
from jaxlab.train import loop

MNIST_MLP = "--config=jaxlab/configs/mnist5k_mlp.py"


def test_scalar_for_tuple_key_is_one_line_exit_2(run_python, tmp_path):
  workdir = tmp_path / "w"
  done = run_python("-m", "experiments.train", MNIST_MLP, f"--workdir={workdir}",
                    "--config.model.hidden_widths=512", "--config.num_steps=60")
  assert done.returncode == 2, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert "model.hidden_widths" in lines[0] and "'512'" in lines[0]
  assert "--config.model.hidden_widths='(512,)'" in lines[0]
  assert "--config.model.hidden_widths='(512,512)'" in lines[0]
  assert not workdir.exists()  # stopped before anything was built or written


@pytest.mark.parametrize("value", ["(512,)", "(64,64)", "64,64", "[64]", "()"])
def test_tuple_forms_are_accepted(value):
  argv = [MNIST_MLP, f"--config.model.hidden_widths={value}"]
  assert config_overrides.bad_override(argv, mnist5k_mlp.get_config()) is None


@pytest.mark.parametrize("argv", [["--config.model.hidden_widths=512"],
                                  ["--config.model.hidden_widths", "512"],
                                  ["--config.model.hidden_widths=relu"]])
def test_scalar_forms_are_refused(argv):
  config = mnist5k_mlp.get_config()
  message = config_overrides.bad_override([MNIST_MLP, *argv], config)
  assert message and "model.hidden_widths is a tuple" in message
  assert config_overrides.bad_override([MNIST_MLP, "--config.num_steps=5"], config) is None


def test_eta_excludes_the_first_steps_compile():
  """100 s of compile in the first step, then 1 s per step: the rate and ETA say 1 s per step."""
  offset = [0.0]
  bar = loop.StepBar(total=20, initial=0, file=io.StringIO(), mininterval=0, unit="step")
  bar._time = lambda: time.time() + offset[0]  # a clock the test advances
  offset[0] += 100.0  # the first step compiles
  bar.update(1)
  assert bar.format_dict["elapsed"] < 1.0  # the timer started after the first step
  for _ in range(5):
    offset[0] += 1.0
    bar.update(1)
  rate = bar.format_dict["rate"]
  assert rate == pytest.approx(1.0, rel=0.1), rate
  assert bar.format_dict["elapsed"] == pytest.approx(5.0, abs=0.5)
  bar.close()


def test_dataset_info_is_loaded_once_per_run(run_python, tmp_path, tfds_data_dir):
  from jaxlab import data
  data.prepare("mnist5k", tfds_data_dir)  # a prepared dataset: the run only loads its info
  done = run_python("-m", "experiments.train", MNIST_MLP, f"--workdir={tmp_path / 'w'}",
                    f"--config.data.data_dir={tfds_data_dir}",
                    "--config.model.hidden_widths=(16,)", "--config.batch_size=32",
                    "--config.num_steps=3", "--config.log_every=1", "--config.eval_every=3",
                    "--config.checkpoint_every=3", "--config.optim.warmup_steps=1")
  assert done.returncode == 0, done.stderr
  loads = [l for l in done.stderr.splitlines() if "Load dataset info" in l]
  assert len(loads) == 1, loads
  assert os.path.join(tfds_data_dir, "mnist5k") in loads[0]
