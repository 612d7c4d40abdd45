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

Adding an op: write `bench_<op>(settings) -> dict` (printing its own tables, returning its
numbers) with `compile_program`, `memory` and `time_interleaved`, and list it in BENCHMARKS.
"""

import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from pallas_kernels.depthwise_conv import api as dw_api
from pallas_kernels.depthwise_conv import reference as dw_reference
from pallas_kernels.fused_norm import api as fn_api
from pallas_kernels.int8_matmul import api as i8_api
from pallas_kernels.int8_matmul import quantize_int8

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
MIB = 2.0**20


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


# ---------------------------------------------------------------- shared measurement helpers


def compile_program(fn: Callable, *args):
  """jit + lower + compile; args may be arrays or jax.ShapeDtypeStructs (compile only)."""
  return jax.jit(fn).lower(*args).compile()


def memory(compiled) -> dict:
  """Byte counts of a compiled program's buffer assignment; `peak` = arg + out + temp - alias."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  out["xla_peak"] = int(getattr(m, "peak_memory_in_bytes", -1))
  return out


def _sample(call, inner: int) -> float:
  """Mean seconds of `inner` calls, each waited for (latency, not pipelined throughput, so the
  number of calls per sample does not bias the comparison)."""
  t = time.perf_counter()
  for _ in range(inner):
    jax.block_until_ready(call())
  return (time.perf_counter() - t) / inner


def time_interleaved(calls: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
  """Seconds per call of each zero-argument call, sampled in interleaved rounds."""
  inner = {}
  for name, call in calls.items():  # warm-up, which also sizes the sample
    inner[name] = max(1, min(1000, math.ceil(setting(_MIN_SAMPLE) / 1e3 / _sample(call, 1))))
  times = {name: [] for name in calls}
  start = time.perf_counter()
  for r in range(setting(_REPEATS)):
    for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
      times[name].append(_sample(calls[name], inner[name]))
    if r >= 2 and time.perf_counter() - start > _BUDGET.value:
      break
  return times


def compare(times: dict[str, list[float]], ref: str, fast: str) -> dict:
  """Median times and the median per-round ratio ref / fast (> 1: fast is faster)."""
  return {"ref_s": statistics.median(times[ref]), "fast_s": statistics.median(times[fast]),
          "speedup": statistics.median(a / b for a, b in zip(times[ref], times[fast])),
          "rounds": len(times[ref])}


def table(header: list[str], rows: list[list]) -> None:
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
  print()


def _ms(s: float) -> str:
  return f"{s * 1e3:.3g}"


def _normal(i: int, shape):
  """Standard normal f32 inputs from numpy (jax.random would compile a program per shape)."""
  return jnp.asarray(np.random.default_rng(i).standard_normal(shape, np.float32))


# ---------------------------------------------------------------- attention

ATTN_PATHS = {"naive": "xla", "chunked": "xla_chunked"}


def _attention_programs(impl: str, block: int):
  kw = dict(block_q=block, block_k=block) if impl == "xla_chunked" and block else {}

  def fwd(q, k, v):
    return pk.attention(q, k, v, causal=True, implementation=impl, **kw)

  def fwd_bwd(q, k, v, ct):
    return jax.grad(lambda q, k, v: jnp.vdot(fwd(q, k, v), ct), argnums=(0, 1, 2))(q, k, v)

  return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def growth(lengths: list[int], mem: list[float]) -> dict:
  """Factor per doubling m(2L) / m(L), and the order p of the growth: log2 of the ratio of
  successive increments (m(4L) - m(2L)) / (m(2L) - m(L)), 1 for a + bL, 2 for a + cL^2."""
  factors = [b / a for a, b in zip(mem, mem[1:])]
  inc = [b - a for a, b in zip(mem, mem[1:])]
  orders = [math.log2(b / a) if a > 0 and b > 0 else float("nan") for a, b in zip(inc, inc[1:])]
  return {"lengths": lengths, "factor_per_doubling": factors, "order": orders}


def bench_attention(s: dict) -> dict:
  H, D, block, max_time = s["attn_heads"], s["head_dim"], s["attn_block"], s["max_time_len"]
  rows = []
  for L in s["attn_lengths"]:
    timed = L <= max_time
    shape = (1, L, H, D)
    args = ([_normal(i, shape) for i in range(4)] if timed
            else [jax.ShapeDtypeStruct(shape, jnp.float32)] * 4)
    row = {"seq_len": L, "memory": {}, "time": None}
    calls = {}
    for path, impl in ATTN_PATHS.items():
      for mode, fn in _attention_programs(impl, block).items():
        a = args[:3] if mode == "fwd" else args
        compiled = compile_program(fn, *a)
        row["memory"][f"{path}_{mode}"] = memory(compiled)
        calls[f"{path}_{mode}"] = (lambda c, a: lambda: c(*a))(compiled, a)
    if timed:
      times = time_interleaved(calls)
      row["time"] = {m: compare(times, f"naive_{m}", f"chunked_{m}") for m in ("fwd", "fwd_bwd")}
    rows.append(row)
    print(f"attention L={L}: compiled{' and timed' if timed else ''}", flush=True)

  keys = [f"{p}_{m}" for m in ("fwd", "fwd_bwd") for p in ATTN_PATHS]
  lengths = [r["seq_len"] for r in rows]
  print(f"\n### attention: peak memory of the compiled programs, MiB (batch 1, {H} heads, "
        f"head_dim {D}, causal, f32; chunked block {block or 'default 512'})")
  table(["seq len"] + [k.replace("_", " ") for k in keys],
        [[L] + [f"{r['memory'][k]['peak'] / MIB:.2f}" for k in keys]
         for L, r in zip(lengths, rows)])
  window = lengths[-4:]
  grow = {k: growth(lengths, [r["memory"][k]["peak"] for r in rows]) for k in keys}
  print("### attention: memory growth per doubling of the length (order p: memory ~ a + b L^p)")
  table(["program"] + [f"{a}->{b}" for a, b in zip(lengths, lengths[1:])]
        + [f"order p ({a}..{b})" for a, b in zip(lengths, lengths[2:])],
        [[k.replace("_", " ")] + [f"{f:.2f}x" for f in g["factor_per_doubling"]]
         + [f"{p:.2f}" for p in g["order"]] for k, g in grow.items()])
  verdict = {}
  n = len(window) - 1
  for k, g in grow.items():
    f = g["factor_per_doubling"][-n:] if n else []
    verdict[k] = ("linear or slower (every factor <= 2.05)" if f and max(f) <= 2.05 else
                  "quadratic (every factor >= 3.5)" if f and min(f) >= 3.5 else "neither")
    print(f"  {k.replace('_', ' ')} over L = {', '.join(map(str, window))}: "
          f"{', '.join(f'{x:.2f}x' for x in f)} -> {verdict[k]}")
  print()
  timed_rows = [r for r in rows if r["time"]]
  if timed_rows:
    print("### attention: time, ms (median; speedup = median per-round naive / chunked)")
    table(["seq len", "naive fwd", "chunked fwd", "speedup fwd", "naive fwd+bwd",
           "chunked fwd+bwd", "speedup fwd+bwd", "rounds"],
          [[r["seq_len"]] + [x for m in ("fwd", "fwd_bwd") for x in
                             (_ms(r["time"][m]["ref_s"]), _ms(r["time"][m]["fast_s"]),
                              f"{r['time'][m]['speedup']:.2f}x")]
           + [r["time"]["fwd"]["rounds"]] for r in timed_rows])
  return {"config": {"batch": 1, "heads": H, "head_dim": D, "causal": True, "dtype": "float32",
                     "chunked_block": block or 512, "max_time_len": max_time,
                     "paths": ATTN_PATHS},
          "rows": rows, "growth": grow, "acceptance_window": window, "verdict": verdict}


# ---------------------------------------------------------------- long convolution


def crossover(lengths: list[int], speedups: list[float]):
  """Shortest length from which the fast path wins at every longer measured length, or None."""
  best = None
  for L, sp in reversed(list(zip(lengths, speedups))):
    if sp <= 1.0:
      break
    best = L
  return best


def bench_long_conv(s: dict) -> dict:
  C = s["long_conv_channels"]
  rows = []
  for L in s["long_conv_lengths"]:
    u, k = _normal(0, (1, L, C)), _normal(1, (L, C))
    calls = {}
    for impl in ("xla", "fft"):
      compiled = compile_program(lambda u, k, impl=impl: pk.long_conv(u, k, implementation=impl),
                                 u, k)
      calls[impl] = (lambda c: lambda: c(u, k))(compiled)
    rows.append({"length": L, **compare(time_interleaved(calls), "xla", "fft")})
    print(f"long_conv L={L}: timed", flush=True)
  lengths = [r["length"] for r in rows]
  cross = crossover(lengths, [r["speedup"] for r in rows])
  print(f"\n### long conv: time, ms (batch 1, {C} channels, kernel length = sequence length, f32; "
        "speedup = median per-round direct / FFT)")
  table(["length", "direct (xla)", "fft", "speedup", "rounds"],
        [[r["length"], _ms(r["ref_s"]), _ms(r["fast_s"]), f"{r['speedup']:.2f}x", r["rounds"]]
         for r in rows])
  if cross is None:
    print("FFT crossover: FFT is not faster at the longest measured length")
  elif cross == lengths[0]:
    print(f"FFT crossover: <= {cross} (FFT faster at every measured length; pass shorter "
          "--long_conv_lengths to locate it)")
  else:
    print(f"FFT crossover: {cross} (FFT faster from here on; not at "
          f"{lengths[lengths.index(cross) - 1]})")
  print()
  return {"config": {"batch": 1, "channels": C, "dtype": "float32", "ref": "xla", "fast": "fft"},
          "rows": rows, "crossover_length": cross,
          "fft_faster_at_all_lengths": cross == lengths[0],
          "fft_faster_from_1024": all(r["speedup"] > 1 for r in rows if r["length"] >= 1024)}


# ---------------------------------------------------------------- depthwise convolution


def _same_program(f, g, *args) -> bool:
  """Whether f and g lower to the same StableHLO (module name aside)."""
  def text(fn):
    return jax.jit(fn).lower(*args).as_text().split("\n", 1)[1]
  return text(f) == text(g)


def bench_depthwise(s: dict) -> dict:
  B, (Hh, Ww, C2) = s["dw_batch"], s["dw2d_shape"]
  cases = []
  for L in s["dw1d_lengths"]:
    x, w = _normal(0, (B, L, s["dw1d_channels"])), _normal(1, (s["dw1d_taps"], s["dw1d_channels"]))
    cases.append((f"1d causal {B}x{L}x{s['dw1d_channels']}, {s['dw1d_taps']} taps", x, w,
                  lambda x, w: dw_reference.depthwise_conv1d(x, w, causal=True),
                  lambda x, w: pk.depthwise_conv1d(x, w, causal=True)))
  for K in s["dw2d_kernels"]:
    x, w = _normal(0, (B, Hh, Ww, C2)), _normal(1, (K, K, C2))
    pads = (dw_reference.same_pads(K),) * 2
    cases.append((f"2d SAME {B}x{Hh}x{Ww}x{C2}, {K}x{K}", x, w,
                  lambda x, w, pads=pads: dw_reference.depthwise_conv2d(x, w, padding=pads),
                  lambda x, w: pk.depthwise_conv2d(x, w, padding="SAME")))
  dispatch = dw_api.default_implementation()
  rows = []
  for name, x, w, ref, fast in cases:
    calls = {}
    for key, fn in (("reference", ref), ("dispatch", fast)):
      compiled = compile_program(fn, x, w)
      calls[key] = (lambda c, x=x, w=w: lambda: c(x, w))(compiled)
    rows.append({"case": name, "same_program": _same_program(ref, fast, x, w),
                 **compare(time_interleaved(calls), "reference", "dispatch")})
    print(f"depthwise {name}: timed", flush=True)
  print(f"\n### depthwise conv: time, ms (f32; dispatch on {jax.default_backend()} = {dispatch!r}; "
        "speedup = median per-round reference / dispatch)")
  table(["case", "reference", f"dispatch ({dispatch})", "speedup", "same program", "rounds"],
        [[r["case"], _ms(r["ref_s"]), _ms(r["fast_s"]), f"{r['speedup']:.2f}x", r["same_program"],
          r["rounds"]] for r in rows])
  return {"config": {"dispatch_implementation": dispatch, "dtype": "float32"}, "rows": rows}


# ---------------------------------------------------------------- fused norm

NORM_EPS = 1e-6
_NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


def kernels(compiled) -> int:
  """How many kernels XLA made of a compiled program: the operations of its entry computation
  that do work (fusions, custom calls, unfused ops), not parameters, constants, tuples or
  bitcasts."""
  text = compiled.as_text()
  entry = text[re.search(r"^ENTRY ", text, re.M).start():]
  entry = entry[:entry.index("\n}")]
  ops = [re.search(r"([a-z][a-z0-9-]*)\(", line.split(" = ", 1)[1])
         for line in entry.splitlines()[1:] if " = " in line]
  return sum(1 for op in ops if op and op.group(1) not in _NOT_KERNELS)


def naive_norm(x, scale, bias, *, kind: str, eps: float):
  """Textbook LayerNorm / RMSNorm as separate jnp ops (mean, variance, sqrt, divide, affine):
  the baseline fused_norm is measured against (f32 inputs, so no upcast is needed)."""
  if kind == "layernorm":
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + eps)
  else:
    y = x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  y = y * scale
  return y if bias is None else y + bias


def _norm_programs(kind: str) -> dict:
  """naive_* and dispatch_* (pallas_kernels.fused_norm, implementation=None) programs, forward
  (x, scale, bias) and forward+backward (x, scale, bias, ct: grads of <y, ct> in x, scale,
  bias)."""
  paths = {"naive": functools.partial(naive_norm, kind=kind, eps=NORM_EPS),
           "dispatch": lambda x, s, b: pk.fused_norm(x, s, b, kind=kind, eps=NORM_EPS)}
  programs = {}
  for path, fn in paths.items():
    programs[f"{path}_fwd"] = fn
    programs[f"{path}_fwd_bwd"] = (lambda fn: lambda x, s, b, ct: jax.grad(
        lambda x, s, b: jnp.vdot(fn(x, s, b), ct), argnums=(0, 1, 2))(x, s, b))(fn)
  return programs


def bench_fused_norm(s: dict) -> dict:
  dispatch = fn_api.default_implementation()
  unknown = [k for k in s["norm_kinds"] if k not in fn_api.KINDS]
  if unknown:
    raise app.UsageError(f"--norm_kinds: unknown {unknown}; valid: {', '.join(fn_api.KINDS)}")
  rows = []
  for kind in s["norm_kinds"]:
    for R in s["norm_rows"]:
      for D in s["norm_features"]:
        x, ct = _normal(0, (R, D)), _normal(3, (R, D))
        scale = 1.0 + 0.1 * _normal(1, (D,))
        bias = 0.1 * _normal(2, (D,)) if kind == "layernorm" else None
        row = {"kind": kind, "rows": R, "features": D, "bias": bias is not None, "memory": {},
               "kernels": {}}
        calls, outputs = {}, {}
        for name, fn in _norm_programs(kind).items():
          a = (x, scale, bias) if name.endswith("_fwd") else (x, scale, bias, ct)
          compiled = compile_program(fn, *a)
          row["memory"][name], row["kernels"][name] = memory(compiled), kernels(compiled)
          calls[name] = (lambda c, a: lambda: c(*a))(compiled, a)
          if name.endswith("_fwd"):
            outputs[name] = calls[name]()
        row["max_abs_diff_fwd"] = float(jnp.max(jnp.abs(outputs["naive_fwd"]
                                                        - outputs["dispatch_fwd"])))
        times = time_interleaved(calls)
        row["time"] = {m: compare(times, f"naive_{m}", f"dispatch_{m}") for m in ("fwd", "fwd_bwd")}
        rows.append(row)
        print(f"fused_norm {kind} {R}x{D}: timed", flush=True)

  def case(r):
    return f"{r['kind']}{' +bias' if r['bias'] else ''} {r['rows']}x{r['features']}"

  print(f"\n### fused norm: time, ms (f32, eps {NORM_EPS}; dispatch on {jax.default_backend()} = "
        f"{dispatch!r}; speedup = median per-round naive / dispatch)")
  table(["case", "naive fwd", f"{dispatch} fwd", "speedup fwd", "naive fwd+bwd",
         f"{dispatch} fwd+bwd", "speedup fwd+bwd", "rounds"],
        [[case(r)] + [x for m in ("fwd", "fwd_bwd") for x in
                      (_ms(r["time"][m]["ref_s"]), _ms(r["time"][m]["fast_s"]),
                       f"{r['time'][m]['speedup']:.2f}x")]
         + [r["time"]["fwd"]["rounds"]] for r in rows])
  keys = ("naive_fwd", "dispatch_fwd", "naive_fwd_bwd", "dispatch_fwd_bwd")
  print("### fused norm: peak memory of the compiled programs, MiB (temporaries in brackets); "
        "kernels = top-level fusions / ops XLA made of each program, naive / dispatch")
  table(["case"] + [k.replace("dispatch", dispatch).replace("_", " ") for k in keys]
        + ["kernels fwd", "kernels fwd+bwd", "max abs diff fwd"],
        [[case(r)] + [f"{r['memory'][k]['peak'] / MIB:.2f} ({r['memory'][k]['temp'] / MIB:.2f})"
                      for k in keys]
         + [f"{r['kernels'][f'naive_{m}']} / {r['kernels'][f'dispatch_{m}']}"
            for m in ("fwd", "fwd_bwd")] + [f"{r['max_abs_diff_fwd']:.1e}"] for r in rows])
  return {"config": {"dispatch_implementation": dispatch, "dtype": "float32", "eps": NORM_EPS,
                     "ref": "naive", "fast": "dispatch",
                     "bias": "layernorm with bias, rmsnorm without"},
          "rows": rows}


# ---------------------------------------------------------------- int8 matmul


def _parse_mkn(text) -> tuple[int, int, int]:
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


INT8_PROGRAMS = {
    "int8": lambda x_q, w_q, x_scale, w_scale: pk.int8_matmul(x_q, w_q, x_scale, w_scale),
    "fake_quant": _fake_quant_matmul,
    "f32": lambda x, w: jnp.dot(x, w),
}


def custom_fusions(compiled) -> list[str]:
  """Kinds of the custom fusions in a compiled program (on XLA:CPU e.g. "__ynn_fusion": the dot
  runs in YNNPACK rather than XLA's own emitter)."""
  return sorted(set(re.findall(r'"kind":"(__\w+)"', compiled.as_text())))


def bench_int8_matmul(s: dict) -> dict:
  dispatch = i8_api.default_implementation()
  rows = []
  for M, K, N in (_parse_mkn(t) for t in s["int8_shapes"]):
    x, w = _normal(0, (M, K)), _normal(1, (K, N))
    x_q, x_scale = quantize_int8(x, axis=1)  # per token, as quantized_matmul does
    w_q, w_scale = quantize_int8(w, axis=0)  # per output channel
    args = {"int8": (x_q, w_q, x_scale, w_scale), "fake_quant": (x_q, w_q, x_scale, w_scale),
            "f32": (x, w)}
    row = {"M": M, "K": K, "N": N, "memory": {}, "custom_fusions": {}}
    calls = {}
    for name, fn in INT8_PROGRAMS.items():
      compiled = compile_program(fn, *args[name])
      row["memory"][name], row["custom_fusions"][name] = memory(compiled), custom_fusions(compiled)
      calls[name] = (lambda c, a: lambda: c(*a))(compiled, args[name])
    times = time_interleaved(calls)
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
        [[shape(r)] + [_ms(r["median_s"][n]) for n in INT8_PROGRAMS]
         + [f"{r['time'][k]['speedup']:.2f}x" for k in ("fake_quant_vs_int8", "f32_vs_int8")]
         + [" / ".join(f"{r['gops'][n]:.1f}" for n in INT8_PROGRAMS),
            r["time"]["f32_vs_int8"]["rounds"]] for r in rows])
  print("### int8 matmul: peak memory of the compiled programs, MiB (temporaries in brackets)")
  table(["M x K x N", "int8", "fake-quant f32", "f32", "custom fusions (int8 / fake-quant / f32)"],
        [[shape(r)] + [f"{r['memory'][n]['peak'] / MIB:.2f} ({r['memory'][n]['temp'] / MIB:.2f})"
                       for n in INT8_PROGRAMS]
         + [" / ".join(",".join(r["custom_fusions"][n]) or "-" for n in INT8_PROGRAMS)]
         for r in rows])
  return {"config": {"dispatch_implementation": dispatch, "quantization":
                     "symmetric int8 abs-max, x per token (row), w per output channel (column)",
                     "fake_quant": "f32 dot of the dequantized codes (same inputs as int8)",
                     "f32": "f32 dot of the unquantized operands"},
          "rows": rows}


# ---------------------------------------------------------------- registry and main

# op name -> benchmark(settings) -> JSON-able dict. One entry per op; --ops picks among them.
BENCHMARKS: dict[str, Callable[[dict], dict]] = {
    "attention": bench_attention,
    "long_conv": bench_long_conv,
    "depthwise": bench_depthwise,
    "fused_norm": bench_fused_norm,
    "int8_matmul": bench_int8_matmul,
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
  machine = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
             "cpu_count": os.cpu_count(), "jax": jax.__version__,
             "python": platform.python_version(),
             "processor": platform.processor() or platform.machine()}
  print(f"bench_kernels: {' '.join(sys.argv[1:]) or '(defaults)'}; ops {ops}; {machine}")
  results = {"command": "python -m experiments.bench_kernels " + " ".join(sys.argv[1:]),
             "machine": machine, "settings": settings, "ops": {}}
  for op in ops:
    results["ops"][op] = BENCHMARKS[op](settings)
  results["wall_seconds"] = time.perf_counter() - start
  print(f"total wall time {results['wall_seconds']:.0f} s")
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
