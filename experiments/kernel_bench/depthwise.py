"""depthwise: the reference (reference.py, grouped lax.conv) vs what
pallas_kernels.depthwise_conv1d / 2d dispatch to here (on CPU: "xla", shift_add.py)."""

import jax

import pallas_kernels as pk
from experiments.kernel_bench.measure import (Timing, compare, compile_program, ms, normal,
                                              table, time_interleaved)
from pallas_kernels.depthwise_conv import api as dw_api
from pallas_kernels.depthwise_conv import reference as dw_reference


def _same_program(f, g, *args) -> bool:
  """Whether f and g lower to the same StableHLO (module name aside)."""
  def text(fn):
    return jax.jit(fn).lower(*args).as_text().split("\n", 1)[1]
  return text(f) == text(g)


def run(s: dict, timing: Timing) -> dict:
  B, (Hh, Ww, C2) = s["dw_batch"], s["dw2d_shape"]
  cases = []
  for L in s["dw1d_lengths"]:
    x, w = normal(0, (B, L, s["dw1d_channels"])), normal(1, (s["dw1d_taps"], s["dw1d_channels"]))
    cases.append((f"1d causal {B}x{L}x{s['dw1d_channels']}, {s['dw1d_taps']} taps", x, w,
                  lambda x, w: dw_reference.depthwise_conv1d(x, w, causal=True),
                  lambda x, w: pk.depthwise_conv1d(x, w, causal=True)))
  for K in s["dw2d_kernels"]:
    x, w = normal(0, (B, Hh, Ww, C2)), normal(1, (K, K, C2))
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
                 **compare(time_interleaved(calls, timing), "reference", "dispatch")})
    print(f"depthwise {name}: timed", flush=True)
  print(f"\n### depthwise conv: time, ms (f32; dispatch on {jax.default_backend()} = {dispatch!r}; "
        "speedup = median per-round reference / dispatch)")
  table(["case", "reference", f"dispatch ({dispatch})", "speedup", "same program", "rounds"],
        [[r["case"], ms(r["ref_s"]), ms(r["fast_s"]), f"{r['speedup']:.2f}x", r["same_program"],
          r["rounds"]] for r in rows])
  return {"config": {"dispatch_implementation": dispatch, "dtype": "float32"}, "rows": rows}
