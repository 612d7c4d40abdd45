"""fused_norm: a naive jnp LayerNorm / RMSNorm (mean, var, sqrt, divide) vs what
pallas_kernels.fused_norm dispatches to here (on CPU "xla", reference.py), forward and
forward+backward: times, compiled peak memory and the number of kernels XLA made of each."""

import functools

from absl import app
import jax
import jax.numpy as jnp

import pallas_kernels as pk
from experiments.kernel_bench.measure import (MIB, Timing, compare, compile_program, kernels,
                                              memory, ms, normal, table, time_interleaved)
from pallas_kernels.fused_norm import api as fn_api

NORM_EPS = 1e-6


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


def run(s: dict, timing: Timing) -> dict:
  dispatch = fn_api.default_implementation()
  unknown = [k for k in s["norm_kinds"] if k not in fn_api.KINDS]
  if unknown:
    raise app.UsageError(f"--norm_kinds: unknown {unknown}; valid: {', '.join(fn_api.KINDS)}")
  rows = []
  for kind in s["norm_kinds"]:
    for R in s["norm_rows"]:
      for D in s["norm_features"]:
        x, ct = normal(0, (R, D)), normal(3, (R, D))
        scale = 1.0 + 0.1 * normal(1, (D,))
        bias = 0.1 * normal(2, (D,)) if kind == "layernorm" else None
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
        times = time_interleaved(calls, timing)
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
                      (ms(r["time"][m]["ref_s"]), ms(r["time"][m]["fast_s"]),
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
