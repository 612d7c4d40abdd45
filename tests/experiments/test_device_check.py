"""experiments.device_check: the checker itself fails a wrong kernel, and the whole command runs
at toy size in the Pallas interpreter on this CPU with every kernel row passing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.device_checks import kernel_cases, kernel_checks

KERNELS = ("attention", "attention_gqa", "depthwise_conv1d", "depthwise_conv2d_7x7",
           "depthwise_conv2d_31x31", "long_conv", "long_conv_long", "fused_layernorm",
           "fused_rmsnorm", "int8_matmul")


def _case(op):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8), np.float32))
  return kernel_cases.Case("square", "4x8", "float32", (x,),
                           lambda x, implementation: op(x), lambda x: x * x, (0,), ())


def test_check_passes_a_correct_kernel_and_fails_wrong_values_or_gradients():
  assert kernel_checks.check(_case(lambda x: x * x), "xla")["passed"]
  wrong_values = kernel_checks.check(_case(lambda x: x * x * 1.01), "xla")
  assert not wrong_values["passed"] and wrong_values["errors"]["out"] > 5e-3
  # right values, half the gradient (x instead of 2x): only the gradient row is off
  wrong_grad = kernel_checks.check(_case(lambda x: x * jax.lax.stop_gradient(x)), "xla")
  assert not wrong_grad["passed"]
  assert wrong_grad["errors"]["out"] == 0 and wrong_grad["errors"]["d0"] > 0.1


def test_toy_run_checks_every_kernel_and_times_the_lm_step(run_python, tmp_path):
  done = run_python("-m", "experiments.device_check", "--size=toy", f"--out_dir={tmp_path}",
                    timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "| kernel | shape | dtype | err out |" in done.stdout
  assert "| dtype | attention |" in done.stdout
  with open(os.path.join(tmp_path, "device_check.json")) as f:
    result = json.load(f)
  assert result["implementation"] == "pallas_interpret" and result["failed"] == []
  rows = {r["kernel"]: r for r in result["kernels"]}
  assert tuple(rows) == KERNELS
  for name, r in rows.items():
    assert r["status"] == "pass", (name, r)
    assert max(r["errors"].values()) <= r["tolerance"]
    assert len(r["errors"]) > 1, f"{name}: no gradient checked"
    xla = "fft" if name.startswith("long_conv") else "xla"
    for path in ("pallas_interpret", xla):
      for mode in ("fwd", "fwd_bwd"):
        t = r["time_ms"][f"{path} {mode}"]
        assert isinstance(t, float) and t > 0, (name, path, mode, t)
  assert isinstance(rows["attention"]["time_ms"]["jax.nn xla fwd_bwd"], float)
  steps = result["lm_step"]
  assert [(s["dtype"], s["attention_impl"]) for s in steps] == [
      ("float32", "pallas_interpret"), ("bfloat16", "pallas_interpret"), ("bfloat16", "xla")]
  assert all(s["finite"] and s["tokens_per_s"] > 0 and 0 < s["mfu"] for s in steps)
  with open(os.path.join(tmp_path, "device_check.md")) as f:
    assert f.read().count("| pass |") == len(KERNELS)
