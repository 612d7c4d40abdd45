"""int8_matmul: pallas_kernels.int8_matmul as dispatched here (on CPU "xla": int8 x int8 ->
int32 dot, then the float rescale) vs the float32 fake-quant matmul of the dequantized codes
(the QAT numerics; same codes and scales in) and vs a plain float32 matmul of the unquantized
operands: times, GOP/s and peak memory."""

import statistics

from absl import app
import jax
import jax.numpy as jnp

import pallas_kernels as pk
from experiments.kernel_bench.measure import (MIB, Timing, compare, compile_program,
                                              custom_fusions, memory, ms, normal, table,
                                              time_interleaved)
from pallas_kernels.int8_matmul import api as i8_api
from pallas_kernels.int8_matmul import quantize_int8


def parse_mkn(text) -> tuple[int, int, int]:
  """(M, K, N) of an --int8_shapes entry "MxKxN"."""
  try:
    M, K, N = (int(v) for v in str(text).lower().split("x"))
  except ValueError:
    raise app.UsageError(f"--int8_shapes: expected MxKxN, e.g. 1024x1024x1024; got {text!r}")
  return M, K, N


def _fake_quant_matmul(x_q, w_q, x_scale, w_scale):
  """The QAT numerics: float32 matmul of the dequantized operands (x_scale[:, None] * x_q) and
  (w_q * w_scale[None, :]), from the same codes and scales as int8_matmul."""
  x = x_q.astype(jnp.float32) * x_scale[:, None]
  w = w_q.astype(jnp.float32) * w_scale[None, :]
  return jnp.dot(x, w)


PROGRAMS = {
    "int8": lambda x_q, w_q, x_scale, w_scale: pk.int8_matmul(x_q, w_q, x_scale, w_scale),
    "fake_quant": _fake_quant_matmul,
    "f32": lambda x, w: jnp.dot(x, w),
}


def run(s: dict, timing: Timing) -> dict:
  dispatch = i8_api.default_implementation()
  rows = []
  for M, K, N in (parse_mkn(t) for t in s["int8_shapes"]):
    x, w = normal(0, (M, K)), normal(1, (K, N))
    x_q, x_scale = quantize_int8(x, axis=1)  # per token, as quantized_matmul does
    w_q, w_scale = quantize_int8(w, axis=0)  # per output channel
    args = {"int8": (x_q, w_q, x_scale, w_scale), "fake_quant": (x_q, w_q, x_scale, w_scale),
            "f32": (x, w)}
    row = {"M": M, "K": K, "N": N, "memory": {}, "custom_fusions": {}}
    calls = {}
    for name, fn in PROGRAMS.items():
      compiled = compile_program(fn, *args[name])
      row["memory"][name], row["custom_fusions"][name] = memory(compiled), custom_fusions(compiled)
      calls[name] = (lambda c, a: lambda: c(*a))(compiled, args[name])
    times = time_interleaved(calls, timing)
    row["time"] = {"fake_quant_vs_int8": compare(times, "fake_quant", "int8"),
                   "f32_vs_int8": compare(times, "f32", "int8")}
    row["median_s"] = {name: statistics.median(t) for name, t in times.items()}
    row["gops"] = {name: 2 * M * K * N / t / 1e9 for name, t in row["median_s"].items()}
    rows.append(row)
    print(f"int8_matmul {M}x{K}x{N}: timed", flush=True)

  def shape(r):
    return f"{r['M']}x{r['K']}x{r['N']}"

  print(f"\n### int8 matmul: time, ms (median; dispatch on {jax.default_backend()} = {dispatch!r}; "
        "ratios = median per-round other / int8, > 1: int8 faster; GOP/s = 2MKN / median time)")
  table(["M x K x N", f"int8 ({dispatch})", "fake-quant f32", "f32", "fake-quant / int8",
         "f32 / int8", "GOP/s int8 / fake-quant / f32", "rounds"],
        [[shape(r)] + [ms(r["median_s"][n]) for n in PROGRAMS]
         + [f"{r['time'][k]['speedup']:.2f}x" for k in ("fake_quant_vs_int8", "f32_vs_int8")]
         + [" / ".join(f"{r['gops'][n]:.1f}" for n in PROGRAMS),
            r["time"]["f32_vs_int8"]["rounds"]] for r in rows])
  print("### int8 matmul: peak memory of the compiled programs, MiB (temporaries in brackets)")
  table(["M x K x N", "int8", "fake-quant f32", "f32", "custom fusions (int8 / fake-quant / f32)"],
        [[shape(r)] + [f"{r['memory'][n]['peak'] / MIB:.2f} ({r['memory'][n]['temp'] / MIB:.2f})"
                       for n in PROGRAMS]
         + [" / ".join(",".join(r["custom_fusions"][n]) or "-" for n in PROGRAMS)]
         for r in rows])
  return {"config": {"dispatch_implementation": dispatch, "quantization":
                     "symmetric int8 abs-max, x per token (row), w per output channel (column)",
                     "fake_quant": "f32 dot of the dequantized codes (same inputs as int8)",
                     "f32": "f32 dot of the unquantized operands"},
          "rows": rows}
