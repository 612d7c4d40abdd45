"""Issue 15 item 5, one line per error: every error a user can cause through experiments.train
(config, flags, data, workdir, mesh) exits 2 with one stderr line naming the key/flag/path and
what is valid, before training starts; --verbose_errors adds the traceback."""

import re

import pytest

from tests.tiny_runs import MLP, VIT, tiny_args

BROKEN = "broken config file"  # written to tmp_path by run_case
ABSL_INFO = re.compile(r"^I\d{4} ")  # absl start-up chatter (TPU backend, dataset info)


# name -> (config, extra flags, workdir kind, env, strings the one line must contain)
CASES = {
    "unknown_dataset": (MLP, ["--config.data.name=mnist5"], "new", {},
                        ["config.data.name='mnist5'", "did you mean 'mnist5k'", "digits"]),
    "warmup_above_num_steps": (MLP, ["--config.num_steps=5", "--config.optim.warmup_steps=50"],
                               "new", {}, ["config.optim.warmup_steps=50", "config.num_steps=5"]),
    "batch_not_divisible_by_devices": (
        MLP, ["--config.batch_size=100"], "new",
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        ["config.batch_size=100", "divisible by the 8 devices"]),
    "mesh_does_not_tile_devices": (
        MLP, ["--config.mesh.data=3"], "new",
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, ["config.mesh", "data * fsdp"]),
    "unknown_parametrization": (MLP, ["--config.param.name=bogus"], "new", {},
                                ["config.param.name='bogus'", "mup"]),
    "old_flat_parametrization_key": (MLP, ["--config.parametrization=mup"], "new", {},
                                     ["'parametrization'", "config.param,", "config.seed"]),
    "unknown_quant": (MLP, ["--config.quant=bogus"], "new", {}, ["config.quant='bogus'", "int8"]),
    "unknown_norm_placement": (VIT, ["--config.model.norm_placement=bogus",
                                     "--config.model.depth=1"], "new", {},
                               ["config.model.norm_placement", "peri"]),
    "unknown_model": (MLP, ["--config.model.name=bogus"], "new", {},
                      ["'bogus'", "config.model.name", "mlp", "vit"]),
    "unknown_optimizer": (MLP, ["--config.optim.name=bogus"], "new", {},
                          ["config.optim.name='bogus'", "adamw"]),
    "unknown_config_key": (MLP, ["--config.optim.bogus_key=1"], "new", {},
                           ["optim.bogus_key", "learning_rate"]),
    "empty_dataset_name": (MLP, ["--config.data.name="], "new", {},
                           ["config.data.name=''", "mnist5k"]),
    "bad_flag_value": (MLP, ["--config.batch_size=abc"], "new", {},
                       ["--config.batch_size=abc", "invalid literal"]),
    "config_file_does_not_load": (BROKEN, [], "new", {}, ["--config", "SyntaxError"]),
    "empty_workdir": (MLP, [], "empty", {}, ["--workdir", "directory"]),
    "workdir_is_a_file": (MLP, [], "file", {}, ["--workdir=", "is a file"]),
    "workdir_under_a_file": (MLP, [], "under_file", {}, ["--workdir=", "Not a directory"]),
}


def workdir_flag(kind, tmp_path):
  if kind == "empty":
    return "--workdir="
  if kind in ("file", "under_file"):
    (tmp_path / "f").write_text("not a directory\n")
    return f"--workdir={tmp_path / 'f'}" + ("/w" if kind == "under_file" else "")
  return f"--workdir={tmp_path / 'w'}"


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip() and not ABSL_INFO.match(line)]


@pytest.fixture(scope="module", autouse=True)
def prepared_mnist5k(tfds_data_dir):
  """Builds mnist5k once up front: its progress output is not part of any error."""
  from jaxlab.data import sources
  sources.prepare("mnist5k", tfds_data_dir)


def run_case(name, run_python, tfds_data_dir, tmp_path, *extra):
  config, flags, kind, env, _ = CASES[name]
  if config == BROKEN:
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    config = tmp_path / "broken.py"
  model = ["--config.model.hidden_widths=(16,)"] if config == MLP else []
  return run_python("-m", "experiments.train", *tiny_args(config, tfds_data_dir, None, 10, *model),
                    *flags, workdir_flag(kind, tmp_path), *extra, env=env, timeout=120)


@pytest.mark.parametrize("name", list(CASES))
def test_user_error_is_one_line_exit_2(name, run_python, tfds_data_dir, tmp_path):
  out = run_case(name, run_python, tfds_data_dir, tmp_path)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = error_lines(out.stderr)
  assert len(lines) == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  for needle in CASES[name][-1]:
    assert needle in lines[0], lines[0]
  assert not (tmp_path / "w" / "checkpoints").exists()  # failed before training
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["unknown_dataset", "warmup_above_num_steps", "unknown_quant",
                                  "workdir_under_a_file", "config_file_does_not_load"])
def test_verbose_errors_shows_the_traceback(name, run_python, tfds_data_dir, tmp_path):
  out = run_case(name, run_python, tfds_data_dir, tmp_path, "--verbose_errors")
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback (most recent call last)" in out.stderr
  assert CASES[name][-1][-1] in out.stderr


BUG = """import runpy, sys
from jaxlab.train import loop
def bug(*args, **kwargs):
  raise ValueError("a bug, not a config value")
loop.train_and_evaluate = bug
sys.argv[0] = "train.py"
runpy.run_module("experiments.train", run_name="__main__")
"""


def test_a_value_error_that_is_not_a_user_error_keeps_its_traceback(run_python, tfds_data_dir,
                                                                     tmp_path):
  """Only UserError (and the run's own errors) are one line: any other exception is a bug."""
  out = run_python("-c", BUG, *tiny_args(MLP, tfds_data_dir, tmp_path / "w", 10), timeout=120)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback (most recent call last)" in out.stderr
  assert "ValueError: a bug, not a config value" in out.stderr
