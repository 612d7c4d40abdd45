"""The markdown report of experiments.device_check: kernel checks and times, attention
baselines and the LM train step, as tables."""


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
