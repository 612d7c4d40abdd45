r"""Benchmark: this machine's f32 GEMM peak, the LM train step's tokens/s and MFU, and the cost
of a quantization-aware (QAT) train step of the same LM, in one run.

  python -m experiments.bench                       # 4 layers, d=256, seq 256, batch 16
  python -m experiments.bench --num_layers=8 --d_model=512
  python -m experiments.bench --qat=w4a8            # another policy; --qat= skips it
  python -m experiments.bench --breakdown --qat=    # + time per op category, ours vs PyTorch
  python -m experiments.bench --sweep               # a 12-LR sweep, jaxlab vs PyTorch (no LM)
  python -m experiments.bench --cpu_devices=1       # the CPU as one XLA device (default: one
                                                    # per core, the batch / LR axis split)

MFU = model FLOPs per second / measured GEMM peak. Model FLOPs per token follow PaLM
(Chowdhery et al. 2022, App. B): 6 N + 12 n_layers seq d_model (forward+backward, attention
scores and values counted in full, causal masking not discounted), N = non-embedding matmul
parameters incl. the readout. The
XLA cost-analysis FLOPs of the compiled step are printed beside it as a cross-check.

QAT cost (--qat, default int8; the quantization issue asks for at most 1.5x the f32 step): the
same LM, optimizer and batches under that policy (jaxlab.quant: int8 fake quant of the weights
per output channel and of the activations per token in every qkv / out / up / down matmul,
straight-through gradients; embedding and readout stay float). Its steps are timed interleaved
with the f32 steps (f32, QAT, f32, QAT, ...), so both see the same background load, and the
ratio of the medians is printed.

PyTorch reference (--torch_reference, on by default when torch is installed): the same LM,
optimizer and batches in plain eager PyTorch (experiments/torch_reference_lm.py, a worker
process), timed in blocks of 5 steps between blocks of ours, and the ratio of tokens/s printed:
how our LM compares with a plain PyTorch CPU LM, measured on this machine in this run. Our
process keeps its freed memory for reuse (jaxlab.sharding.host_memory); the worker runs with
glibc's defaults, as PyTorch users have them, or with the same settings under
--torch_same_malloc.
"""

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.configs import shakespeare_lm
from experiments import bench_sweep, cpu_devices_flag
from experiments.kernel_bench.measure import lm_flops_per_token
from jaxlab import data, optim, quant, sharding
from jaxlab.sharding import host_memory
from jaxlab.train import step as step_lib, tasks
from jaxlab.train.init import build_model, dummy_input, init_state

_LAYERS = flags.DEFINE_integer("num_layers", 4, "LM depth")
_DMODEL = flags.DEFINE_integer("d_model", 256, "LM width")
_HEADS = flags.DEFINE_integer("num_heads", 4, "attention heads")
_SEQ = flags.DEFINE_integer("seq_len", 256, "sequence length")
_BATCH = flags.DEFINE_integer("batch_size", 16, "global batch size")
_STEPS = flags.DEFINE_integer("steps", 20, "timed train steps")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default $TFDS_DATA_DIR)")
_QAT = flags.DEFINE_string("qat", "int8", "quantization policy whose train step is timed against "
                           "the f32 one (jaxlab.quant.names()); empty: skip")
_TORCH = flags.DEFINE_bool("torch_reference", True, "time the same LM in plain PyTorch "
                           "(experiments/torch_reference_lm.py) in blocks between ours")
_TORCH_MALLOC = flags.DEFINE_bool(
    "torch_same_malloc", False, "start the PyTorch worker with the malloc settings our process "
    "sets (jaxlab.sharding.host_memory.GLIBC_ENV): PyTorch's time with the same allocator")
_SWEEP = flags.DEFINE_bool("sweep", False, "instead of the LM step: time a learning-rate sweep of "
                           "the mnist5k MLP, jaxlab vs PyTorch (experiments/bench_sweep.py)")
_SWEEP_WIDTHS = flags.DEFINE_list("sweep_widths", ["128", "512"], "--sweep: MLP widths")
_SWEEP_LRS = flags.DEFINE_integer("sweep_lrs", 12, "--sweep: learning rates per width")
_SWEEP_STEPS = flags.DEFINE_integer("sweep_steps", 300, "--sweep: AdamW steps per run")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "profile a few train steps, ours and (with "
                               "--torch_reference) PyTorch's, and print the time per op category "
                               "side by side (experiments/bench_breakdown.py)")
QAT_TARGET = 1.5  # the quantization issue's bound on QAT step time / f32 step time
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the workers' cwd
TORCH_BLOCK = 5  # our steps between PyTorch blocks (and PyTorch steps per block)


def gemm_peak(sizes=(512, 1024, 2048), repeats=5) -> tuple[float, int]:
  """Best f32 GFLOP/s of a jitted square matmul over a few sizes, and the size that gave it."""
  best = (0.0, 0)
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    reps = max(1, int(2e9 // (2 * n**3)))  # ~2 GFLOP per timing
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      for _ in range(reps):
        out = f(a, b)
      out.block_until_ready()
      times.append((time.perf_counter() - t) / reps)
    best = max(best, (2 * n**3 / min(times) / 1e9, n))
  return best


def print_gemm_peak() -> float:
  """Measures, prints and returns the f32 GEMM peak in GFLOP/s."""
  peak, n = gemm_peak()
  print(f"f32 GEMM peak: {peak:.1f} GFLOP/s (n={n}, {jax.device_count()} device(s), "
        f"{jax.devices()[0].platform})")
  return peak


class _Runner:
  """One LM train step (model, optimizer, state) that times itself; the state is donated."""

  def __init__(self, config, spec, mesh, batch):
    model = build_model(config, spec)
    self.tx = optim.make_optimizer(config.optim, config.num_steps)
    self.state, shardings = init_state(model, self.tx, dummy_input(spec, _SEQ.value), 0, mesh)
    self.kw = dict(model=model, tx=self.tx, task=tasks.LM,
                   state_sharding=step_lib.Static(shardings))
    compiled = step_lib.train_step.lower(self.state, batch, **self.kw).compile()
    # XLA's cost analysis of an SPMD program counts one device's share
    self.xla_flops = (compiled.cost_analysis() or {}).get("flops", float("nan")) * mesh.size
    self.times: list[float] = []

  def step(self, batch, timed: bool = True) -> None:
    t = time.perf_counter()
    self.state, m = step_lib.train_step(self.state, batch, **self.kw)
    jax.block_until_ready(m["loss"])
    if timed:
      self.times.append(time.perf_counter() - t)


class _TorchReference:
  """experiments.torch_reference_lm on the same batches, timed in blocks between our steps.

  Each block starts a fresh worker process, runs one untimed warm-up step and `n` timed ones,
  and ends it: a live PyTorch worker, even asleep (no CPU time, no context switches), slowed
  our XLA step by 25-30% on the 2-core machine (2.4 s -> 3.0-3.2 s, 2026-12-03), so ours are
  never timed while one is alive.
  """

  def __init__(self, batches, config, vocab_size: int, same_malloc: bool = False):
    self.env = dict(os.environ, **host_memory.GLIBC_ENV) if same_malloc else None
    self.dir = tempfile.mkdtemp(prefix="jaxlab_bench_")
    path = os.path.join(self.dir, "batches.npz")
    np.savez(path, **{k: np.stack([np.asarray(b[k]) for b in batches])
                      for k in ("inputs", "targets")})
    m, o = config.model, config.optim
    self.args = [sys.executable, "-m", "experiments.torch_reference_lm", f"--batches={path}",
                 f"--num_layers={m.num_layers}", f"--d_model={m.d_model}",
                 f"--num_heads={m.num_heads}", f"--mlp_ratio={m.mlp_ratio}",
                 f"--vocab_size={vocab_size}", f"--learning_rate={o.learning_rate}",
                 f"--b1={o.b1}", f"--b2={o.b2}", f"--eps={o.eps}",
                 f"--weight_decay={o.weight_decay}", f"--grad_clip={o.grad_clip}"]
    self.times: list[float] = []
    self.losses: list[float] = []
    self.version = ""

  def run_block(self, n: int) -> None:
    proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=_REPO, env=self.env)
    try:
      for count, timed in ((1, False), (n, True)):
        proc.stdin.write(f"{count}\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
          raise RuntimeError(f"the PyTorch reference worker exited with code {proc.wait()}")
        out = json.loads(line)
        self.version = out["torch"]
        if timed:
          self.times += out["times"]
          self.losses += out["losses"]
    finally:
      proc.stdin.close()
      proc.wait()


def main(argv):
  del argv
  cpu_devices_flag.apply()
  if _SWEEP.value:
    print_gemm_peak()
    bench_sweep.run(_DATA_DIR.value, [int(w) for w in _SWEEP_WIDTHS.value], _SWEEP_LRS.value,
                    _SWEEP_STEPS.value, torch_reference=_TORCH.value)
    return
  if _QAT.value:
    quant.get(_QAT.value)  # an unknown name fails before the slow part, listing the valid ones
  peak = print_gemm_peak()

  config = shakespeare_lm.get_config()
  config.data.data_dir = _DATA_DIR.value
  config.data.seq_len = _SEQ.value
  config.batch_size = _BATCH.value
  config.model.update(num_layers=_LAYERS.value, d_model=_DMODEL.value, num_heads=_HEADS.value)
  mesh = sharding.make_mesh(config.mesh)
  spec = data.dataset_spec(config.data)
  it = data.make_train_iterator(config.data, batch_size=_BATCH.value, seed=0)
  batches = [sharding.shard_batch(next(it), mesh) for _ in range(4)]
  runners = {"f32": _Runner(config, spec, mesh, batches[0])}
  if _QAT.value:
    qat_config = ml_collections.ConfigDict(config.to_dict())
    qat_config.quant = _QAT.value
    runners[_QAT.value] = _Runner(qat_config, spec, mesh, batches[0])
  ref = None
  if _TORCH.value and importlib.util.find_spec("torch") is None:
    print("PyTorch reference: skipped, torch is not installed (pip install torch; "
          "--notorch_reference skips it without this line)")
  elif _TORCH.value:
    ref = _TorchReference(batches, config, spec.vocab_size, same_malloc=_TORCH_MALLOC.value)
  for r in runners.values():
    for i in range(3):  # warm up
      r.step(batches[i % 4], timed=False)
  for i in range(_STEPS.value):  # interleaved: f32, QAT, f32, QAT, ..., a PyTorch block, ...
    for r in runners.values():
      r.step(batches[i % 4])
    if ref is not None and ((i + 1) % TORCH_BLOCK == 0 or i + 1 == _STEPS.value):
      ref.run_block((i % TORCH_BLOCK) + 1)
  f32 = runners["f32"]
  step_time = statistics.median(f32.times)
  tokens = _BATCH.value * _SEQ.value
  flops_tok = lm_flops_per_token(_LAYERS.value, _DMODEL.value, config.model.mlp_ratio, _SEQ.value,
                                 spec.vocab_size)
  achieved = flops_tok * tokens / step_time / 1e9
  print(f"LM train step ({_LAYERS.value} layers, d={_DMODEL.value}, heads={_HEADS.value}, "
        f"seq {_SEQ.value}, batch {_BATCH.value}, AdamW, f32): median {step_time * 1e3:.1f} ms/step"
        f" over {_STEPS.value} steps")
  print(f"  tokens/s: {tokens / step_time:,.0f}")
  print(f"  model FLOPs/token (PaLM 6N + 12 L T d): {flops_tok / 1e6:.1f} M; XLA cost analysis: "
        f"{f32.xla_flops / tokens / 1e6:.1f} M")
  print(f"  achieved {achieved:.1f} GFLOP/s = MFU {100 * achieved / peak:.1f}% of the measured peak")
  if _QAT.value:
    qat = runners[_QAT.value]
    qat_time = statistics.median(qat.times)
    ratio = qat_time / step_time
    print(f"QAT train step, same LM and batches, policy {_QAT.value!r} (timed interleaved with the "
          f"f32 step): median {qat_time * 1e3:.1f} ms/step = {ratio:.2f}x the f32 step "
          f"({'within' if ratio <= QAT_TARGET else 'above'} the {QAT_TARGET}x target); "
          f"XLA cost analysis {qat.xla_flops / f32.xla_flops:.2f}x the f32 FLOPs")
  if ref is not None:
    shutil.rmtree(ref.dir)
    if not all(np.isfinite(ref.losses)):
      raise RuntimeError(f"the PyTorch reference's losses are not finite: {ref.losses}")
    ref_time = statistics.median(ref.times)
    malloc = ", malloc set as ours" if ref.env else ""
    print(f"PyTorch {ref.version} reference{malloc}, same LM, AdamW and batches, eager (timed in "
          f"blocks of {TORCH_BLOCK} between ours, a fresh worker from init each; loss at a "
          f"block's last step {ref.losses[-1]:.3f}): median "
          f"{ref_time * 1e3:.1f} ms/step, {tokens / ref_time:,.0f} tokens/s, MFU "
          f"{100 * flops_tok * tokens / ref_time / 1e9 / peak:.1f}%")
    print(f"  jaxlab / PyTorch tokens/s: {ref_time / step_time:.2f}x")
  if _BREAKDOWN.value:  # after all timing: profiling slows the steps it records
    from experiments import bench_breakdown  # pylint: disable=g-import-not-at-top
    hlo = step_lib.train_step.lower(f32.state, batches[0], **f32.kw).compile().as_text()
    ours = bench_breakdown.jax_op_times(lambda: f32.step(batches[0], timed=False), hlo)
    theirs, name = None, "ours only"
    if ref is not None:  # a fresh worker, alone (see _TorchReference)
      ref = _TorchReference(batches, config, spec.vocab_size, same_malloc=_TORCH_MALLOC.value)
      theirs, version = bench_breakdown.torch_op_times(ref.args, _REPO, env=ref.env)
      shutil.rmtree(ref.dir)
      name = f"ours and PyTorch {version} eager"
    print(f"Time per op category, profiled train steps ({name}):")
    print(bench_breakdown.format_table(ours, theirs))
    print(bench_breakdown.format_copies(bench_breakdown.copy_inventory(hlo)))


if __name__ == "__main__":
  app.run(main)
