"""Measurement helpers shared by the kernel benchmarks: compiling, compiled-program memory and
kernels, interleaved timing, markdown tables, LM model FLOPs (for MFU)."""

import dataclasses
import math
import re
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

MIB = 2.0**20
_NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


@dataclasses.dataclass(frozen=True)
class Timing:
  """How time_interleaved samples: `repeats` rounds per size, each sample repeating a call until
  it lasts min_sample_ms, no new round after budget_s seconds (keeping at least 3 rounds)."""
  repeats: int
  min_sample_ms: float
  budget_s: float


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


def custom_fusions(compiled) -> list[str]:
  """Kinds of the custom fusions in a compiled program (on XLA:CPU e.g. "__ynn_fusion": the dot
  runs in YNNPACK rather than XLA's own emitter)."""
  return sorted(set(re.findall(r'"kind":"(__\w+)"', compiled.as_text())))


def _sample(call, inner: int) -> float:
  """Mean seconds of `inner` calls, each waited for (latency, not pipelined throughput, so the
  number of calls per sample does not bias the comparison)."""
  t = time.perf_counter()
  for _ in range(inner):
    jax.block_until_ready(call())
  return (time.perf_counter() - t) / inner


def time_interleaved(calls: dict[str, Callable[[], object]], timing: Timing
                     ) -> dict[str, list[float]]:
  """Seconds per call of each zero-argument call, sampled in interleaved rounds."""
  inner = {}
  for name, call in calls.items():  # warm-up, which also sizes the sample
    inner[name] = max(1, min(1000, math.ceil(timing.min_sample_ms / 1e3 / _sample(call, 1))))
  times = {name: [] for name in calls}
  start = time.perf_counter()
  for r in range(timing.repeats):
    for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
      times[name].append(_sample(calls[name], inner[name]))
    if r >= 2 and time.perf_counter() - start > timing.budget_s:
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


def ms(s: float) -> str:
  return f"{s * 1e3:.3g}"


def normal(i: int, shape):
  """Standard normal f32 inputs from numpy (jax.random would compile a program per shape)."""
  return jnp.asarray(np.random.default_rng(i).standard_normal(shape, np.float32))


def lm_flops_per_token(num_layers: int, d_model: int, mlp_ratio: int, seq_len: int,
                       vocab: int) -> float:
  """Model FLOPs per token of a decoder LM train step: PaLM's 6N + 12 L T d (Chowdhery et al.
  2022, App. B; N: non-embedding matmul parameters incl. the readout)."""
  n = num_layers * (4 * d_model**2 + 2 * mlp_ratio * d_model**2) + d_model * vocab
  return 6 * n + 12 * num_layers * seq_len * d_model
