"""Checking and timing one kernel row of experiments.device_check: errors of the output and
gradients against the f32 reference, and forward / forward+backward times against the XLA paths."""

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.device_checks.kernel_cases import F32, Case, normal
from experiments.kernel_bench.measure import Timing, compile_program, time_interleaved

# max|out - ref| / max|ref| allowed, by the kernel's input dtype
TOLERANCE = {"float32": 5e-3, "bfloat16": 3e-2, "int8": 1e-5}


def _relative_error(out, ref) -> float:
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _fwd_bwd(f: Callable, diff: tuple[int, ...]) -> Callable:
  """(*args, ct) -> (out, gradients of <out, ct> for args[diff])."""

  def run(*args_ct):
    *args, ct = args_ct

    def of_diff(*d):
      full = list(args)
      for i, a in zip(diff, d):
        full[i] = a
      return f(*full)

    out, vjp = jax.vjp(of_diff, *(args[i] for i in diff))
    return out, vjp(ct.astype(out.dtype))

  return run


def check(case: Case, impl: str) -> dict:
  """Errors of the kernel's output and gradients against the f32 reference."""
  args = case.args
  if case.check_slice is not None:
    args = tuple(a[:case.check_slice] for a in args)
  kernel = lambda *a: case.op(*a, implementation=impl)  # noqa: E731
  upcast = tuple(a.astype(F32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)
  out = jax.eval_shape(kernel, *args)
  ct = normal(np.random.default_rng(1), out.shape, out.dtype)
  if case.diff:
    out, grads = jax.jit(_fwd_bwd(kernel, case.diff))(*args, ct)
    ref, ref_grads = jax.jit(_fwd_bwd(case.reference, case.diff))(*upcast, ct)
  else:
    out, grads = jax.jit(kernel)(*args), ()
    ref, ref_grads = jax.jit(case.reference)(*upcast), ()
  errors = {"out": _relative_error(out, ref)}
  errors.update({f"d{i}": _relative_error(g, r) for i, g, r in zip(case.diff, grads, ref_grads)})
  tol = TOLERANCE[case.dtype]
  return {"errors": errors, "tolerance": tol,
          "passed": all(np.isfinite(e) and e <= tol for e in errors.values())}


def na_reason(e: Exception) -> str:
  return f"n/a: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def time_case(case: Case, impl: str, timing: Timing) -> dict:
  """Median ms of forward and forward+backward for the kernel, each XLA path and baseline; a
  program that does not compile or run here (cuDNN missing, out of memory) is "n/a: why"."""
  fns = {impl: lambda *a: case.op(*a, implementation=impl)}
  fns.update({p: (lambda p: lambda *a: case.op(*a, implementation=p))(p) for p in case.paths})
  fns.update(case.baselines)
  out = jax.eval_shape(fns[impl], *case.args)
  ct = normal(np.random.default_rng(1), out.shape, out.dtype)
  result = {}
  for mode in ("fwd", "fwd_bwd") if case.diff else ("fwd",):
    calls, args = {}, case.args if mode == "fwd" else (*case.args, ct)
    for name, f in fns.items():
      try:
        compiled = compile_program(f if mode == "fwd" else _fwd_bwd(f, case.diff), *args)
        jax.block_until_ready(compiled(*args))  # warm-up; fails here if it does not fit
      except Exception as e:  # noqa: BLE001
        result[f"{name} {mode}"] = na_reason(e)
        continue
      calls[name] = (lambda c, a: lambda: c(*a))(compiled, args)
    for name, times in time_interleaved(calls, timing).items():
      result[f"{name} {mode}"] = statistics.median(times) * 1e3
  return result


def run_case(case: Case, impl: str, timing: Timing) -> dict:
  """Check, then time, one kernel; status pass / FAIL (tolerance) / refused (the dispatcher
  has no kernel for this call here) / error (an exception in the check)."""
  row = {"kernel": case.name, "shape": case.shape, "dtype": case.dtype, "implementation": impl,
         "xla_path": case.paths[0]}
  t = time.perf_counter()
  try:
    row.update(check(case, impl))
    row["status"] = "pass" if row["passed"] else "FAIL"
  except ValueError as e:  # the dispatcher refuses: no kernel for this target / shape
    row.update(status="refused", error=str(e))
  except Exception as e:  # noqa: BLE001  (one broken kernel must not hide the others)
    row.update(status="error", error=f"{type(e).__name__}: {e}")
  if row["status"] in ("pass", "FAIL"):
    try:
      row["time_ms"] = time_case(case, impl, timing)
    except Exception as e:  # noqa: BLE001
      row["time_ms"] = {"error": na_reason(e)}
  row["seconds"] = time.perf_counter() - t
  print(f"{case.name}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
  return row
