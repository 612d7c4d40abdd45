r"""One command for a fresh GPU or TPU machine: every Pallas kernel compiled there, checked
against its reference and timed against the XLA path, and the LM train step's tokens/s and MFU.

  python -m experiments.device_check                      # GPU / TPU, full sizes (sized for
                                                          # < 8 min on one H100)
  python -m experiments.device_check --size=toy           # any machine; no accelerator: the
                                                          # kernels run in the Pallas interpreter
  python -m experiments.device_check --out_dir=/tmp/dc    # where the JSON and markdown go

Kernels (through the public pallas_kernels API with implementation="pallas", or
"pallas_interpret" with --interpret and automatically when this machine has no GPU/TPU):
attention forward + backward (causal MHA bf16, causal GQA f32), depthwise conv 1-D and 2-D
(7x7, 31x31) forward + backward, long convolution forward + backward (at 1024 and at 4096 taps:
on GPU implementation=None takes the FFT beyond 1024, long_convolution.api.MAX_LENGTH, and these
two rows measure that crossover), fused LayerNorm / RMSNorm forward + backward, int8 matmul (and
its scale gradients). Each is checked against the op's
plain-XLA reference.py on the same inputs upcast to f32: the error is max|out - ref| / max|ref|
for the output and for each gradient (a fixed random cotangent), and must stay below the stated
tolerance (TOLERANCE: f32 kernels may use TF32 / bf16 passes on the matrix units; bf16 rounds
inputs and the probabilities). Attention is checked on the first batch element (the reference
materialises the logits). Each kernel's forward and forward+backward are timed against the op's
XLA path; attention also against jax.nn.dot_product_attention (implementation "xla" and, on
GPU, "cudnn"). Times: compiled once (warm-up), then the median of interleaved rounds of
block_until_ready calls (experiments.kernel_bench.measure.time_interleaved).

LM train step: jaxlab's TransformerLM (attention_impl "auto": the kernel on GPU/TPU) built from
jaxlab.models, initialised by jaxlab.train.init.init_state, stepped by the module-level
jaxlab.train.step.train_step with AdamW on synthetic tokens, in f32 and with bf16 compute
(params f32), and bf16 with the XLA attention for comparison. MFU = model FLOPs/s (PaLM,
Chowdhery et al. 2022, App. B: 6N + 12 L T d per token, as experiments.bench) / this device's
matmul peak measured here in the same dtype.

Only jax, flax, optax, absl and numpy are needed (plus jaxlab.models / jaxlab.train /
pallas_kernels): no dataset, tensorflow-datasets, grain or ml_collections. Writes
device_check.json and device_check.md to --out_dir and prints the tables; exits 1 when a
check fails.
"""

import dataclasses
import datetime
import json
import os
import statistics
import time
import types
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pallas_kernels as pk
from experiments.kernel_bench.measure import (Timing, compile_program, lm_flops_per_token,
                                              time_interleaved)
from jaxlab import models, sharding
from jaxlab.train import init
from jaxlab.train import step as step_lib
from pallas_kernels import _dispatch
from pallas_kernels.depthwise_conv import reference as dw_ref
from pallas_kernels.flash_attention import reference as attn_ref
from pallas_kernels.fused_norm import reference as norm_ref
from pallas_kernels.int8_matmul import reference as int8_ref
from pallas_kernels.long_convolution import reference as lc_ref

SIZES = ("toy", "full")
_SIZE = flags.DEFINE_enum("size", "full", SIZES, "full: realistic shapes (GPU/TPU); toy: tiny "
                          "shapes that run in the Pallas interpreter on a CPU in a minute or two")
_INTERPRET = flags.DEFINE_bool("interpret", None, "run the kernels in the Pallas interpreter "
                               "(implementation='pallas_interpret'); default: only when this "
                               "machine has no GPU/TPU")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/jaxlab/device_check",
                               "where device_check.json and device_check.md are written")
_LM_STEP = flags.DEFINE_bool("lm_step", True, "time the LM train step")

F32, BF16 = jnp.float32, jnp.bfloat16
# max|out - ref| / max|ref| allowed, by the kernel's input dtype
TOLERANCE = {"float32": 5e-3, "bfloat16": 3e-2, "int8": 1e-5}
TIMING = {"toy": Timing(repeats=1, min_sample_ms=0.0, budget_s=0.0),
          "full": Timing(repeats=5, min_sample_ms=20.0, budget_s=6.0)}


@dataclasses.dataclass(frozen=True)
class Case:
  """One kernel row: `op(*args, implementation=...)` against `reference(*f32 args)`.

  diff: indices of the arguments differentiated (gradients checked and fwd+bwd timed);
  paths: XLA implementations of the op to time against; baselines: other functions of *args
  to time (jax.nn.dot_product_attention); check_slice: the leading batch elements checked
  against the reference (None: all)."""
  name: str
  shape: str
  dtype: str
  args: tuple
  op: Callable
  reference: Callable
  diff: tuple[int, ...]
  paths: tuple[str, ...]
  baselines: dict = dataclasses.field(default_factory=dict)
  check_slice: int | None = None


def _normal(rng: np.random.Generator, shape, dtype=F32) -> jax.Array:
  return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)


def _attention_case(rng, name, B, L, H, K, D, dtype, baselines: bool) -> Case:
  q, k, v = (_normal(rng, (B, L, n, D), dtype) for n in (H, K, K))

  def op(q, k, v, implementation):
    return pk.attention(q, k, v, causal=True, implementation=implementation)

  extra = {}
  if baselines:
    extra["jax.nn xla"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="xla")
    if _dispatch.backend_target() == "gpu" and dtype == BF16:
      extra["jax.nn cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn")
  return Case(name, f"B={B} L={L} H={H} K={K} D={D} causal", jnp.dtype(dtype).name, (q, k, v),
              op, lambda q, k, v: attn_ref.attention(q, k, v, causal=True), (0, 1, 2),
              ("xla", "xla_chunked"), extra, check_slice=1)


def _depthwise2d_case(rng, name, B, S, C, ksize, dtype) -> Case:
  x, w = _normal(rng, (B, S, S, C), dtype), _normal(rng, (ksize, ksize, C), dtype) / ksize
  pads = (dw_ref.same_pads(ksize),) * 2
  return Case(name, f"B={B} {S}x{S} C={C} k={ksize}x{ksize} SAME", jnp.dtype(dtype).name, (x, w),
              lambda x, w, implementation: pk.depthwise_conv2d(
                  x, w, padding="SAME", implementation=implementation),
              lambda x, w: dw_ref.depthwise_conv2d(x, w, padding=pads), (0, 1), ("xla",))


def _long_conv_case(rng, name, B, L, C) -> Case:
  u, k = _normal(rng, (B, L, C)), _normal(rng, (L, C)) / L ** 0.5
  return Case(name, f"B={B} L={L} C={C}", "float32", (u, k),
              lambda u, k, implementation: pk.long_conv(u, k, implementation=implementation),
              lc_ref.long_conv, (0, 1), ("fft",))


def _norm_case(rng, kind, rows, D, dtype) -> Case:
  x = _normal(rng, (rows, D), dtype)
  scale = 1 + 0.1 * _normal(rng, (D,), dtype)
  bias = 0.1 * _normal(rng, (D,), dtype) if kind == "layernorm" else None
  args = (x, scale) if bias is None else (x, scale, bias)
  return Case(f"fused_{kind}", f"{rows}x{D}", jnp.dtype(dtype).name, args,
              lambda *a, implementation: pk.fused_norm(*a, kind=kind,
                                                       implementation=implementation),
              lambda *a: norm_ref.fused_norm(*a, kind=kind), tuple(range(len(args))), ("xla",))


def _int8_case(rng, M, K, N) -> Case:
  x_q = jnp.asarray(rng.integers(-127, 128, (M, K)), jnp.int8)
  w_q = jnp.asarray(rng.integers(-127, 128, (K, N)), jnp.int8)
  xs = jnp.asarray(rng.uniform(0.5, 1.5, M) / 127, F32)
  ws = jnp.asarray(rng.uniform(0.5, 1.5, N) / 127, F32)
  return Case("int8_matmul", f"{M}x{K} @ {K}x{N}", "int8", (x_q, w_q, xs, ws),
              lambda *a, implementation: pk.int8_matmul(*a, implementation=implementation),
              int8_ref.int8_matmul, (2, 3), ("xla",))


def cases(size: str) -> list[Case]:
  """The kernel rows at `size` ("toy": interpreter-sized; "full": realistic, < 8 min on H100)."""
  rng = np.random.default_rng(0)
  toy = size == "toy"
  B1, L1, C1 = (2, 128, 128) if toy else (8, 4096, 768)
  rows, D = (64, 256) if toy else (16384, 1024)
  x1, w1 = _normal(rng, (B1, L1, C1)), _normal(rng, (4, C1)) / 2
  return [
      _attention_case(rng, "attention", *((1, 256, 2, 2, 64) if toy else (4, 4096, 16, 16, 128)),
                      BF16, baselines=True),
      _attention_case(rng, "attention_gqa", *((1, 256, 4, 1, 64) if toy else (2, 2048, 16, 2, 64)),
                      F32, baselines=False),
      Case("depthwise_conv1d", f"B={B1} L={L1} C={C1} taps=4 causal", "float32", (x1, w1),
           lambda x, w, implementation: pk.depthwise_conv1d(x, w, causal=True,
                                                            implementation=implementation),
           lambda x, w: dw_ref.depthwise_conv1d(x, w, causal=True), (0, 1), ("xla",)),
      _depthwise2d_case(rng, "depthwise_conv2d_7x7", *((1, 16, 128) if toy else (32, 56, 128)),
                        7, BF16),
      _depthwise2d_case(rng, "depthwise_conv2d_31x31", *((1, 32, 128) if toy else (8, 64, 128)),
                        31, F32),
      _long_conv_case(rng, "long_conv", *((1, 256, 128) if toy else (8, 1024, 512))),
      _long_conv_case(rng, "long_conv_long", *((1, 512, 128) if toy else (4, 4096, 256))),
      _norm_case(rng, "layernorm", rows, D, BF16),
      _norm_case(rng, "rmsnorm", rows, D, F32),
      _int8_case(rng, *((64, 256, 128) if toy else (4096, 4096, 4096))),
  ]


# ---------------------------------------------------------------------------------- checking


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
  ct = _normal(np.random.default_rng(1), out.shape, out.dtype)
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


def _na(e: Exception) -> str:
  return f"n/a: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def time_case(case: Case, impl: str, timing: Timing) -> dict:
  """Median ms of forward and forward+backward for the kernel, each XLA path and baseline; a
  program that does not compile or run here (cuDNN missing, out of memory) is "n/a: why"."""
  fns = {impl: lambda *a: case.op(*a, implementation=impl)}
  fns.update({p: (lambda p: lambda *a: case.op(*a, implementation=p))(p) for p in case.paths})
  fns.update(case.baselines)
  out = jax.eval_shape(fns[impl], *case.args)
  ct = _normal(np.random.default_rng(1), out.shape, out.dtype)
  result = {}
  for mode in ("fwd", "fwd_bwd") if case.diff else ("fwd",):
    calls, args = {}, case.args if mode == "fwd" else (*case.args, ct)
    for name, f in fns.items():
      try:
        compiled = compile_program(f if mode == "fwd" else _fwd_bwd(f, case.diff), *args)
        jax.block_until_ready(compiled(*args))  # warm-up; fails here if it does not fit
      except Exception as e:  # noqa: BLE001
        result[f"{name} {mode}"] = _na(e)
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
      row["time_ms"] = {"error": _na(e)}
  row["seconds"] = time.perf_counter() - t
  print(f"{case.name}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
  return row


# --------------------------------------------------------------------------------- LM step


def matmul_peak(dtype, n: int, timing: Timing) -> float:
  """TFLOP/s of a jitted n x n x n matmul in `dtype` on the default device (median)."""
  a = _normal(np.random.default_rng(0), (n, n), dtype)
  compiled = compile_program(jnp.matmul, a, a)
  times = time_interleaved({"mm": lambda: compiled(a, a)}, timing)["mm"]
  return 2 * n**3 / statistics.median(times) / 1e12


LM_SIZES = {"toy": dict(d_model=128, num_layers=1, num_heads=2, seq_len=256, batch=2, steps=2),
            "full": dict(d_model=1024, num_layers=8, num_heads=8, seq_len=2048, batch=8,
                         steps=10)}


def time_lm_step(size: str, dtype: str, attention_impl: str, peak: float) -> dict:
  """tokens/s and MFU of the TransformerLM train step (synthetic tokens, AdamW, one device)."""
  s = LM_SIZES[size]
  T, B, vocab = s["seq_len"], s["batch"], 256
  model = models.build({"name": "transformer", "d_model": s["d_model"],
                        "num_layers": s["num_layers"], "num_heads": s["num_heads"],
                        "mlp_ratio": 4, "max_len": T, "vocab_size": vocab, "dtype": dtype,
                        "attention_impl": attention_impl})
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))
  mesh = sharding.make_mesh(types.SimpleNamespace(data=1, fsdp=1), devices=jax.devices()[:1])
  state, _ = init.init_state(model, tx, jnp.zeros((1, T), jnp.int32), 0, mesh)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (B, T + 1)), jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  kw = dict(model=model, tx=tx, task="lm")
  t = time.perf_counter()
  state, metrics = step_lib.train_step(state, batch, **kw)  # compiles
  jax.block_until_ready(metrics["loss"])
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(s["steps"]):
    t = time.perf_counter()
    state, metrics = step_lib.train_step(state, batch, **kw)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = lm_flops_per_token(s["num_layers"], s["d_model"], 4, T, vocab) * B * T / step_s / 1e12
  loss = float(metrics["loss"])
  return {"dtype": dtype, "attention_impl": attention_impl,
          "config": {k: v for k, v in s.items() if k != "steps"}, "compile_s": compile_s,
          "step_ms": step_s * 1e3, "tokens_per_s": B * T / step_s, "model_tflops": flops,
          "peak_tflops": peak, "mfu": flops / peak, "loss": loss, "finite": bool(np.isfinite(loss))}


# ---------------------------------------------------------------------------------- output


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.3g}"
  if isinstance(v, str) and v.startswith("n/a"):
    return "n/a"
  return "-" if v is None else str(v)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
  """The report: kernel checks and times, attention baselines, LM train step."""
  impl = result["implementation"]
  out = [f"device_check on {result['device']} ({result['backend']}), jax {result['jax']}, "
         f"{result['date']}, size {result['size']}, kernels: implementation={impl!r}\n"]
  rows = []
  for r in result["kernels"]:
    t, ref = r.get("time_ms", {}), r["xla_path"]

    def speed(mode, t=t, ref=ref):
      k, x = t.get(f"{impl} {mode}"), t.get(f"{ref} {mode}")
      return x / k if isinstance(k, float) and isinstance(x, float) else None

    errors = r.get("errors", {})
    rows.append([r["kernel"], r["shape"], r["dtype"], errors.get("out"),
                 max((v for k, v in errors.items() if k != "out"), default=None),
                 r.get("tolerance"), r["status"], ref, t.get(f"{impl} fwd"), t.get(f"{ref} fwd"),
                 speed("fwd"), t.get(f"{impl} fwd_bwd"), t.get(f"{ref} fwd_bwd"),
                 speed("fwd_bwd")])
  out.append("Kernels vs the f32 reference (error: max|out - ref| / max|ref|, worst gradient) "
             "and vs the op's XLA path (ms, median; speedup = XLA / kernel):\n")
  out.append(_table(["kernel", "shape", "dtype", "err out", "err grad", "tol", "check", "XLA path",
                     "kernel fwd", "XLA fwd", "x fwd", "kernel fwd+bwd", "XLA fwd+bwd",
                     "x fwd+bwd"], rows))
  for r in result["kernels"]:
    notes = [f"{r['status']}: {r['error'][:300]}"] if "error" in r else []
    notes += [f"{k}: {v}" for k, v in r.get("time_ms", {}).items() if isinstance(v, str)]
    out += [f"- {r['kernel']}: {n}" for n in notes]
  attn = [r for r in result["kernels"] if r["kernel"] == "attention" and "time_ms" in r]
  if attn:
    t = attn[0]["time_ms"]
    names = [impl, "xla", "xla_chunked", "jax.nn xla", "jax.nn cudnn"]
    out.append(f"\nAttention {attn[0]['shape']} {attn[0]['dtype']}, ms (median):\n")
    out.append(_table(["mode"] + names, [[m] + [t.get(f"{n} {m}") for n in names]
                                         for m in ("fwd", "fwd_bwd")]))
  if result.get("lm_step"):
    out.append("\nLM train step (TransformerLM, AdamW, synthetic tokens; MFU: PaLM model FLOPs / "
               "this device's measured matmul peak in the step's dtype):\n")
    out.append(_table(
        ["dtype", "attention", "layers x d_model", "batch x seq", "ms/step", "tokens/s",
         "model TFLOP/s", "peak TFLOP/s", "MFU", "loss"],
        [[r["dtype"], r["attention_impl"],
          f"{r['config']['num_layers']} x {r['config']['d_model']}",
          f"{r['config']['batch']} x {r['config']['seq_len']}", r["step_ms"],
          f"{r['tokens_per_s']:,.0f}", r["model_tflops"], r["peak_tflops"],
          f"{100 * r['mfu']:.1f}%", r["loss"]] if "error" not in r
         else [r["dtype"], r["attention_impl"], "error"] + [None] * 7
         for r in result["lm_step"]]))
    out += [f"- LM step {r['dtype']} {r['attention_impl']}: {r['error']}"
            for r in result["lm_step"] if "error" in r]
  return "\n".join(out)


def main(argv):
  del argv
  size = _SIZE.value
  interpret = _INTERPRET.value
  if interpret is None:
    interpret = _dispatch.backend_target() is None
  impl = "pallas_interpret" if interpret else "pallas"
  timing = TIMING[size]
  device = jax.devices()[0]
  start = time.perf_counter()
  result = {"device": getattr(device, "device_kind", str(device)), "backend": jax.default_backend(),
            "jax": jax.__version__, "date": datetime.date.today().isoformat(), "size": size,
            "implementation": impl, "tolerance": TOLERANCE}
  print(f"device_check: {result['device']} ({result['backend']}), jax {jax.__version__}, size "
        f"{size}, kernels via implementation={impl!r}", flush=True)
  result["kernels"] = [run_case(c, impl, timing) for c in cases(size)]
  if _LM_STEP.value:
    n = 256 if size == "toy" else 8192
    peaks = {d: matmul_peak(jnp.dtype(d), n, timing) for d in ("float32", "bfloat16")}
    result["matmul_peak_tflops"] = peaks
    attention = "pallas_interpret" if interpret else "auto"
    runs = [("float32", attention), ("bfloat16", attention), ("bfloat16", "xla")]
    result["lm_step"] = []
    for dtype, attn in runs:
      try:
        row = time_lm_step(size, dtype, attn, peaks[dtype])
      except Exception as e:  # noqa: BLE001  (e.g. out of memory: report, go on)
        row = {"dtype": dtype, "attention_impl": attn, "error": _na(e), "finite": False}
      result["lm_step"].append(row)
      took = f"{row['step_ms']:.1f} ms/step" if "step_ms" in row else row["error"]
      print(f"LM step {dtype} attention={attn}: {took}", flush=True)
  result["seconds"] = time.perf_counter() - start
  failed = [r["kernel"] for r in result["kernels"] if r["status"] != "pass"]
  passed = len(result["kernels"]) - len(failed)
  failed += [f"lm_step {r['dtype']} {r['attention_impl']}" for r in result.get("lm_step", [])
             if not r["finite"]]
  result["failed"] = failed
  report = markdown(result)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, "device_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(_OUT_DIR.value, "device_check.md"), "w") as f:
    f.write(report)
  print("\n" + report)
  print(f"{passed} of {len(result['kernels'])} kernel rows pass; "
        f"{result['seconds']:.0f} s; wrote {_OUT_DIR.value}/device_check.{{json,md}}")
  if failed:
    raise SystemExit(f"device_check: not passed: {', '.join(failed)}")


def _single_threaded_cpu_eigen() -> None:
  """XLA:CPU of jaxlib 0.11.2 sometimes never finishes an FFT program (its FftThunk runs ducc0
  on the intra-op Eigen pool it is itself running on; here ~1 toy run in 5 hung in the long
  conv's "fft" backward, jaxlib 0.10.2 never did). Single-threaded Eigen avoids it; only XLA:CPU
  reads the flag, so accelerator runs are unaffected. Must run before the backends start."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_cpu_multi_thread_eigen=false".strip()


if __name__ == "__main__":
  _single_threaded_cpu_eigen()
  app.run(main)
