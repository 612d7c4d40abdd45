"""long_conv: "xla" (direct causal conv) vs "fft", kernel length = sequence length, batch 1;
the crossover is the shortest measured length from which FFT is faster at every longer one."""

import pallas_kernels as pk
from experiments.kernel_bench.measure import (Timing, compare, compile_program, ms, normal,
                                              table, time_interleaved)


def crossover(lengths: list[int], speedups: list[float]):
  """Shortest length from which the fast path wins at every longer measured length, or None."""
  best = None
  for L, sp in reversed(list(zip(lengths, speedups))):
    if sp <= 1.0:
      break
    best = L
  return best


def run(s: dict, timing: Timing) -> dict:
  C = s["long_conv_channels"]
  rows = []
  for L in s["long_conv_lengths"]:
    u, k = normal(0, (1, L, C)), normal(1, (L, C))
    calls = {}
    for impl in ("xla", "fft"):
      compiled = compile_program(lambda u, k, impl=impl: pk.long_conv(u, k, implementation=impl),
                                 u, k)
      calls[impl] = (lambda c: lambda: c(u, k))(compiled)
    rows.append({"length": L, **compare(time_interleaved(calls, timing), "xla", "fft")})
    print(f"long_conv L={L}: timed", flush=True)
  lengths = [r["length"] for r in rows]
  cross = crossover(lengths, [r["speedup"] for r in rows])
  print(f"\n### long conv: time, ms (batch 1, {C} channels, kernel length = sequence length, f32; "
        "speedup = median per-round direct / FFT)")
  table(["length", "direct (xla)", "fft", "speedup", "rounds"],
        [[r["length"], ms(r["ref_s"]), ms(r["fast_s"]), f"{r['speedup']:.2f}x", r["rounds"]]
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
