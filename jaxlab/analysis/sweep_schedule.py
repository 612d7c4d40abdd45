"""A learning-rate sweep that picks how to run its K runs: all vmapped in one program, or one
after the other.

Vmapping turns each matmul into a batched matmul. On XLA:CPU that pays where a step is mostly
per-op overhead (small widths) and loses once the matmuls are large (the 2-layer mnist5k MLP
at width 512: 4.03 ms per LR-step vmapped vs 3.76 one at a time; docs/results/cpu_speed.md).
Compilation counts too: a short sweep of small models spends as long compiling as training,
and the K-LR program compiles ~1.6x slower than the one-LR program.

schedule='auto' therefore first runs LR 0 alone with the one-LR program (init, scan, eval
fused; real work, nothing is thrown away) and times its compilation and its run. The other
K - 1 then run one after the other with that same program, unless vmapping them is predicted
to be faster: at best their FLOPs (XLA's cost analysis of the one-LR program) at this
machine's measured matmul peak, plus compiling the vmapped program (COMPILE_RATIO x the
one-LR program's compile time).
"""

import functools
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.analysis.lr_sweep import make_sweep
from jaxlab.train.tasks import Task

SCHEDULES = ("auto", "vmap", "loop")
COMPILE_RATIO = 1.6  # compile time of the 12-LR / the 1-LR mnist5k MLP program, measured 2.4 / 1.5 s


@functools.lru_cache(maxsize=None)
def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of the default device's best n x n f32 matmul out of `repeats` (measured once per
  process)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def run_sweep(model: nn.Module, tx_fn: Callable[[jax.Array], optax.GradientTransformation],
              task: Task | str, lrs: Sequence[float], seeds: Sequence[int], train_batches: dict,
              eval_batch: dict, schedule: str = "auto") -> dict:
  """{'train_loss' [K, S, T], 'eval_loss' [K, S], 'schedule' (the one used), 'estimate' (auto:
  the predicted seconds of the rest of the sweep each way)}; every run is lr_sweep.make_sweep's."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}: valid: {', '.join(SCHEDULES)}")
  lrs = np.asarray(lrs, np.float32)
  seeds = np.asarray(seeds, np.uint32)
  sweep = make_sweep(model, tx_fn, task)
  if schedule == "vmap":
    train, final = sweep(lrs, seeds, train_batches, eval_batch)
    return {"train_loss": np.asarray(train), "eval_loss": np.asarray(final), "schedule": "vmap",
            "estimate": {}}
  t = time.perf_counter()
  one = sweep.lower(lrs[:1], seeds, train_batches, eval_batch).compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  parts = [jax.block_until_ready(one(lrs[:1], seeds, train_batches, eval_batch))]
  run_s = time.perf_counter() - t
  rest, estimate = len(lrs) - 1, {}
  if schedule == "auto" and rest > 1:
    flops = (one.cost_analysis() or {}).get("flops", 0.0)
    estimate = {"loop": rest * run_s,
                "vmap": rest * flops / matmul_peak_flops() + COMPILE_RATIO * compile_s}
    if estimate["vmap"] < estimate["loop"]:
      schedule = "vmap"
      parts.append(sweep(lrs[1:], seeds, train_batches, eval_batch))
  if schedule != "vmap":
    schedule = "loop"
    parts += [one(lrs[k:k + 1], seeds, train_batches, eval_batch) for k in range(1, len(lrs))]
  return {"train_loss": np.concatenate([np.asarray(p[0]) for p in parts]),
          "eval_loss": np.concatenate([np.asarray(p[1]) for p in parts]),
          "schedule": schedule, "estimate": estimate}
