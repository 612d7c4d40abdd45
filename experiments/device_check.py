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
check fails. This module is the command (flags, main); the rows, checks, LM step and report are
in experiments/device_checks/.
"""

import datetime
import json
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from experiments.device_checks import kernel_cases, kernel_checks, lm_step, report
from experiments.kernel_bench.measure import Timing
from pallas_kernels import _dispatch

SIZES = ("toy", "full")
_SIZE = flags.DEFINE_enum("size", "full", SIZES, "full: realistic shapes (GPU/TPU); toy: tiny "
                          "shapes that run in the Pallas interpreter on a CPU in a minute or two")
_INTERPRET = flags.DEFINE_bool("interpret", None, "run the kernels in the Pallas interpreter "
                               "(implementation='pallas_interpret'); default: only when this "
                               "machine has no GPU/TPU")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/jaxlab/device_check",
                               "where device_check.json and device_check.md are written")
_LM_STEP = flags.DEFINE_bool("lm_step", True, "time the LM train step")

TIMING = {"toy": Timing(repeats=1, min_sample_ms=0.0, budget_s=0.0),
          "full": Timing(repeats=5, min_sample_ms=20.0, budget_s=6.0)}


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
            "implementation": impl, "tolerance": kernel_checks.TOLERANCE}
  print(f"device_check: {result['device']} ({result['backend']}), jax {jax.__version__}, size "
        f"{size}, kernels via implementation={impl!r}", flush=True)
  result["kernels"] = [kernel_checks.run_case(c, impl, timing) for c in kernel_cases.cases(size)]
  if _LM_STEP.value:
    n = 256 if size == "toy" else 8192
    peaks = {d: lm_step.matmul_peak(jnp.dtype(d), n, timing) for d in ("float32", "bfloat16")}
    result["matmul_peak_tflops"] = peaks
    attention = "pallas_interpret" if interpret else "auto"
    runs = [("float32", attention), ("bfloat16", attention), ("bfloat16", "xla")]
    result["lm_step"] = []
    for dtype, attn in runs:
      try:
        row = lm_step.time_lm_step(size, dtype, attn, peaks[dtype])
      except Exception as e:  # noqa: BLE001  (e.g. out of memory: report, go on)
        row = {"dtype": dtype, "attention_impl": attn, "error": kernel_checks.na_reason(e),
               "finite": False}
      result["lm_step"].append(row)
      took = f"{row['step_ms']:.1f} ms/step" if "step_ms" in row else row["error"]
      print(f"LM step {dtype} attention={attn}: {took}", flush=True)
  result["seconds"] = time.perf_counter() - start
  failed = [r["kernel"] for r in result["kernels"] if r["status"] != "pass"]
  passed = len(result["kernels"]) - len(failed)
  failed += [f"lm_step {r['dtype']} {r['attention_impl']}" for r in result.get("lm_step", [])
             if not r["finite"]]
  result["failed"] = failed
  text = report.markdown(result)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, "device_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(_OUT_DIR.value, "device_check.md"), "w") as f:
    f.write(text)
  print("\n" + text)
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
