r"""Kernel benchmark: each op's XLA reference against its fast XLA path, in one run on this host.

  python -m experiments.bench_kernels        # default sizes (about 6.5 min on 2 shared cores;
                                             # fused_norm + int8_matmul alone: 65-75 s)
  python -m experiments.bench_kernels --ops=long_conv --long_conv_lengths=8,16,32,64
  python -m experiments.bench_kernels --quick --json_out=/tmp/k.json   # tiny sizes, seconds

  attention  "xla" (dense: [B, H, L, L] logits, hand-written VJP, dense.py) vs "xla_chunked"
             (online softmax, O(L) memory),
             causal, batch 1: peak memory of every compiled program per length (deterministic,
             from XLA's buffer assignment), growth per doubling, forward and forward+backward
             times up to --max_time_len (longer lengths are compiled, not run).
  long_conv  "xla" (direct causal conv) vs "fft", kernel length = sequence length; the crossover
             is the shortest measured length from which FFT is faster at every longer one.
  depthwise  the reference (reference.py, grouped lax.conv) vs what
             pallas_kernels.depthwise_conv1d/2d dispatch to here (on CPU: "xla", shift_add.py).
  fused_norm a naive jnp LayerNorm / RMSNorm written here (mean, var, sqrt, divide) vs what
             pallas_kernels.fused_norm dispatches to (on CPU "xla", reference.py), forward and
             forward+backward: times, compiled peak memory and the number of kernels (top-level
             fusions / calls) XLA made of each program.
  int8_matmul pallas_kernels.int8_matmul as dispatched (on CPU "xla": int8 x int8 -> int32 dot,
             then the float rescale) vs the float32 fake-quant matmul of the dequantized codes
             (the QAT numerics; same int8 codes and scales in) and vs a plain float32 matmul of
             the unquantized operands: times, GOP/s and peak memory.

Timings: every program is compiled first; then per size the programs run interleaved (round r
runs them in order, round r + 1 in reverse), a sample repeats a call (waiting for each) until
>= --min_sample_ms, and each row reports median times and the median over rounds of the
per-round time ratio (reference / fast; > 1: the fast path is faster), so a noisy shared
machine affects both sides.
Peak memory = argument + output + temp - alias bytes of `compiled.memory_analysis()` (jax 0.10's
`peak_memory_in_bytes` leaves out the temp buffer on CPU; it is kept in the JSON as `xla_peak`).

Adding an op: write experiments/kernel_bench/<op>.py with `run(settings, timing) -> dict`
(printing its own tables, returning its numbers) from the helpers of kernel_bench/measure.py
(`compile_program`, `memory`, `time_interleaved`, ...), and list it in BENCHMARKS.
"""

import json
import os
import platform
import sys
import time
from typing import Callable

from absl import app, flags
import jax

from experiments.kernel_bench import attention, depthwise, fused_norm, int8_matmul, long_conv
from experiments.kernel_bench.measure import Timing

FLAGS = flags.FLAGS
_OPS = flags.DEFINE_list("ops", None, "ops to run, any of attention, long_conv, depthwise, "
                        "fused_norm, int8_matmul (default: every entry of BENCHMARKS)")
_QUICK = flags.DEFINE_bool("quick", False, "tiny sizes (QUICK) for flags not given explicitly")
_JSON = flags.DEFINE_string("json_out", "", "write every number to this JSON file")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed rounds per size")
_MIN_SAMPLE = flags.DEFINE_float("min_sample_ms", 20.0, "a timing sample repeats a call until "
                                 "it lasts this long")
_BUDGET = flags.DEFINE_float("size_budget_s", 40.0, "stop a size's rounds after this many "
                             "seconds (keeping at least 3 rounds)")
_ATTN_LENGTHS = flags.DEFINE_list("attn_lengths", ["256", "512", "1024", "2048", "4096", "8192"],
                                  "attention sequence lengths")
_MAX_TIME_LEN = flags.DEFINE_integer("max_time_len", 4096, "attention: time lengths up to this; "
                                     "longer ones only compile (memory)")
_ATTN_HEADS = flags.DEFINE_integer("attn_heads", 4, "attention heads")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "attention head dim")
_ATTN_BLOCK = flags.DEFINE_integer("attn_block", 0, "chunked block_q = block_k (0: the library "
                                   "default, 512)")
_LC_LENGTHS = flags.DEFINE_list("long_conv_lengths", [str(2**i) for i in range(6, 14)],
                                "long conv sequence = kernel lengths")
_LC_CHANNELS = flags.DEFINE_integer("long_conv_channels", 16, "long conv channels (batch 1)")
_DW1_LENGTHS = flags.DEFINE_list("dw1d_lengths", ["2048", "8192"], "depthwise 1d lengths")
_DW1_CHANNELS = flags.DEFINE_integer("dw1d_channels", 256, "depthwise 1d channels")
_DW1_TAPS = flags.DEFINE_integer("dw1d_taps", 4, "depthwise 1d causal taps")
_DW2_KERNELS = flags.DEFINE_list("dw2d_kernels", ["7", "13", "31"], "depthwise 2d kernel sizes")
_DW2_SHAPE = flags.DEFINE_list("dw2d_shape", ["56", "56", "64"],
                               "depthwise 2d height,width,channels")
_DW_BATCH = flags.DEFINE_integer("dw_batch", 1, "depthwise batch size")
_NORM_ROWS = flags.DEFINE_list("norm_rows", ["4096", "16384"], "fused norm rows (tokens)")
_NORM_FEATURES = flags.DEFINE_list("norm_features", ["256", "1024"], "fused norm feature dims")
_NORM_KINDS = flags.DEFINE_list("norm_kinds", ["layernorm", "rmsnorm"],
                                "fused norm kinds (layernorm with bias, rmsnorm without)")
_INT8_SHAPES = flags.DEFINE_list("int8_shapes", ["1024x1024x1024", "2048x2048x2048",
                                                 "4096x256x1024"], "int8 matmul MxKxN sizes")

QUICK = dict(attn_lengths=["128", "256"], max_time_len=256, attn_heads=2, attn_block=32,
             long_conv_lengths=["16", "64", "256"], long_conv_channels=4, dw1d_lengths=["256"],
             dw1d_channels=16, dw2d_kernels=["5"], dw2d_shape=["16", "16", "8"],
             norm_rows=["64"], norm_features=["128"], int8_shapes=["64x128x32"], repeats=3,
             min_sample_ms=2.0)  # compiling dominates: few programs


def setting(flag):
  """The flag's value, or its QUICK size under --quick unless the flag was given; list entries
  that are integers become ints, the others ("layernorm", "64x128x32") stay strings."""
  name = flag.name
  if _QUICK.value and name in QUICK and not FLAGS[name].present:
    value = QUICK[name]
  else:
    value = flag.value
  if isinstance(value, list):
    return [int(v) if v.strip().lstrip("-").isdigit() else v for v in value]
  return value


# op name -> benchmark(settings, timing) -> JSON-able dict. One entry per op; --ops picks
# among them.
BENCHMARKS: dict[str, Callable[[dict, Timing], dict]] = {
    "attention": attention.run,
    "long_conv": long_conv.run,
    "depthwise": depthwise.run,
    "fused_norm": fused_norm.run,
    "int8_matmul": int8_matmul.run,
}


def main(argv):
  del argv
  start = time.perf_counter()
  ops = _OPS.value or list(BENCHMARKS)
  unknown = [op for op in ops if op not in BENCHMARKS]
  if unknown:
    raise app.UsageError(f"--ops: unknown {unknown}; valid: {', '.join(BENCHMARKS)}")
  settings = {f.name: setting(f) for f in (
      _REPEATS, _MIN_SAMPLE, _ATTN_LENGTHS, _MAX_TIME_LEN, _ATTN_HEADS, _HEAD_DIM, _ATTN_BLOCK,
      _LC_LENGTHS, _LC_CHANNELS, _DW1_LENGTHS, _DW1_CHANNELS, _DW1_TAPS, _DW2_KERNELS,
      _DW2_SHAPE, _DW_BATCH, _NORM_ROWS, _NORM_FEATURES, _NORM_KINDS, _INT8_SHAPES)}
  timing = Timing(repeats=settings["repeats"], min_sample_ms=settings["min_sample_ms"],
                  budget_s=_BUDGET.value)
  machine = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
             "cpu_count": os.cpu_count(), "jax": jax.__version__,
             "python": platform.python_version(),
             "processor": platform.processor() or platform.machine()}
  print(f"bench_kernels: {' '.join(sys.argv[1:]) or '(defaults)'}; ops {ops}; {machine}")
  results = {"command": "python -m experiments.bench_kernels " + " ".join(sys.argv[1:]),
             "machine": machine, "settings": settings, "ops": {}}
  for op in ops:
    results["ops"][op] = BENCHMARKS[op](settings, timing)
  results["wall_seconds"] = time.perf_counter() - start
  print(f"total wall time {results['wall_seconds']:.0f} s")
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
