"""experiments.bench end to end at toy size (without the PyTorch reference, which CI lacks)."""

import re
import shutil

from experiments import bench


def test_lm_flops_per_token_counts_palm_terms():
  # 1 layer, d 4, mlp 2: N = 4*16 + 2*2*16 + 4*8 = 160 params; 6N + 12 * 1 * 10 * 4
  assert bench.lm_flops_per_token(1, 4, 2, 10, 8) == 6 * 160 + 12 * 1 * 10 * 4


def test_bench_cli_prints_mfu_and_qat_ratio(run_python, tfds_data_dir):
  done = run_python("-m", "experiments.bench", f"--data_dir={tfds_data_dir}", "--num_layers=1",
                    "--d_model=32", "--seq_len=32", "--batch_size=4", "--steps=2",
                    "--notorch_reference")
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  mfu = float(re.search(r"MFU ([\d.]+)% of the measured peak", out).group(1))
  assert 0 < mfu < 100
  assert re.search(r"\(PaLM 6N \+ 12 L T d\): [\d.]+ M; XLA cost analysis: [\d.]+ M", out)
  assert "policy 'int8'" in out and "PyTorch" not in out


def test_bench_sweep_prints_the_schedule_and_both_jaxlab_times(run_python, tfds_data_dir):
  done = run_python("-m", "experiments.bench", f"--data_dir={tfds_data_dir}", "--sweep",
                    "--sweep_widths=16", "--sweep_lrs=8", "--sweep_steps=80", "--cpu_devices=2",
                    "--notorch_reference")
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  assert re.search(r"\(a\) jaxlab sweep, schedule (vmap|loop) \(after two chunks, predicted for "
                   r"the rest: loop [\d.]+ s, vmap [\d.]+ s\): [\d.]+ s", out), out
  assert re.search(r"\(b\) jaxlab one by one: [\d.]+ s   \(a\)/\(b\) speed-up [\d.]+x", out), out
  assert "PyTorch: skipped" in out


def test_torch_same_malloc_starts_the_worker_with_our_allocator_settings():
  """--torch_same_malloc: the PyTorch worker's environment carries host_memory.GLIBC_ENV (what
  that does to a process: tests/sharding/test_host_memory.py); by default it inherits ours."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxlab.configs import shakespeare_lm  # pylint: disable=import-outside-toplevel
  from jaxlab.sharding import host_memory  # pylint: disable=import-outside-toplevel
  batches = [{"inputs": np.zeros((2, 8), np.int32), "targets": np.zeros((2, 8), np.int32)}]
  config = shakespeare_lm.get_config()
  same = bench._TorchReference(batches, config, 256, same_malloc=True)  # pylint: disable=protected-access
  default = bench._TorchReference(batches, config, 256)  # pylint: disable=protected-access
  for ref in (same, default):
    shutil.rmtree(ref.dir)
  assert {k: same.env[k] for k in host_memory.GLIBC_ENV} == host_memory.GLIBC_ENV
  assert default.env is None
