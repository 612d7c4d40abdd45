"""attention: "xla" (dense [B, H, L, L] logits, dense.py) vs "xla_chunked" (online softmax,
O(L) memory), causal, batch 1: compiled peak memory per length, its growth per doubling, and
forward / forward+backward times up to max_time_len."""

import math

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from experiments.kernel_bench.measure import (MIB, Timing, compare, compile_program, memory, ms,
                                              normal, table, time_interleaved)

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


def run(s: dict, timing: Timing) -> dict:
  H, D, block, max_time = s["attn_heads"], s["head_dim"], s["attn_block"], s["max_time_len"]
  rows = []
  for L in s["attn_lengths"]:
    timed = L <= max_time
    shape = (1, L, H, D)
    args = ([normal(i, shape) for i in range(4)] if timed
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
      times = time_interleaved(calls, timing)
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
                             (ms(r["time"][m]["ref_s"]), ms(r["time"][m]["fast_s"]),
                              f"{r['time'][m]['speedup']:.2f}x")]
           + [r["time"]["fwd"]["rounds"]] for r in timed_rows])
  return {"config": {"batch": 1, "heads": H, "head_dim": D, "causal": True, "dtype": "float32",
                     "chunked_block": block or 512, "max_time_len": max_time,
                     "paths": ATTN_PATHS},
          "rows": rows, "growth": grow, "acceptance_window": window, "verdict": verdict}
