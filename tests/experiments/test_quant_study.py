"""experiments.quant_study end to end at toy size: digits MLP, three QAT policies, two PTQ
recipes of the fp32 model."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import quant_study
from jaxlab.analysis import plots
from tests.plot_checks import figure_problems, png_problems


@pytest.fixture
def digits_config(tfds_data_dir):
  from jaxlab.configs import digits_mlp
  c = digits_mlp.get_config()
  c.data.data_dir = tfds_data_dir
  c.model.hidden_widths = (32, 32)
  c.batch_size = 32
  c.num_steps = 30
  c.log_every = 10
  c.eval_every = 0
  c.stats_every = 0
  c.checkpoint_every = 30
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 3
  return c


def test_quant_study_runs_policies_and_ptq(digits_config, tmp_path):
  out = quant_study.run(digits_config, ["fp8_delayed", "lsq_w4a8"], ["int8", "int4"],
                        str(tmp_path), calib_batches=2)
  results = out["results"]
  assert list(results) == ["fp32", "fp8_delayed", "lsq_w4a8", "ptq_int8", "ptq_int4"]
  assert results["fp32"]["delta_loss"] == 0 and results["fp32"]["rel_loss"] == 1
  for name, r in results.items():
    assert r["eval_accuracy"] > 0.6 and np.isfinite(r["eval_loss"]), (name, r)
    assert r["delta_accuracy"] == pytest.approx(r["eval_accuracy"]
                                                - results["fp32"]["eval_accuracy"])
  int8, int4 = results["ptq_int8"], results["ptq_int4"]
  assert abs(int8["delta_accuracy"]) < 0.05 and int8["top1_agreement"] > 0.9
  assert int8["logits_rel_error"] < int4["logits_rel_error"]
  assert int8["quantized_weights"] == ["dense_1/kernel"]  # first layer and readout stay float
  for name in ("fp32", "fp8_delayed", "lsq_w4a8"):
    assert os.listdir(tmp_path / name / "checkpoints") == ["30"]
  state = ocp.StandardCheckpointer().restore(tmp_path / "fp8_delayed/checkpoints/30/state")
  history = np.asarray(state["extra"]["quant_state"]["dense_1"]["gradient"]["history"])
  assert np.all(history > 0)  # 30 steps filled the 16 entries
  md = (tmp_path / "quant_study.md").read_text()
  assert "| lsq_w4a8 | QAT |" in md and "| ptq_int4 | PTQ w4a8 |" in md
  assert json.loads((tmp_path / "quant_study.json").read_text())["num_steps"] == 30
  assert png_problems((tmp_path / "quant_study.png").read_bytes()) == []
  assert figure_problems(plots.quant_figure(results, quant_study.title(digits_config))) == []


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="--policies: unknown quantization policy 'int3'"):
    quant_study.check_names(["int3"], [])
  with pytest.raises(ValueError, match="--ptq: unknown recipe 'int2'; valid: int8, int4"):
    quant_study.check_names(["fp32"], ["int2"])
  assert quant_study.check_names(["int8", "fp32"], []) == ["fp32", "int8"]
