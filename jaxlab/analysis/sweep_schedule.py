"""A learning-rate sweep that picks how to run its K runs: all vmapped in one program, or one
after the other.

Vmapping turns each matmul into a batched matmul. On XLA:CPU that pays where a step is mostly
per-op overhead (small widths) and loses once the matmuls are large (the 2-layer mnist5k MLP
at width 512: 4.03 ms per LR-step vmapped vs 3.76 one at a time; docs/results/cpu_speed.md).
Compilation counts too: a short sweep of small models spends as long compiling as training,
and the K-LR program compiles ~1.6x slower than the one-LR program.

schedule='auto' therefore first runs LRs 0 and 1 alone with the one-LR program (init, scan,
eval fused; real work, nothing is thrown away) and times its compilation and the second run
(the first pays one-time costs). The other K - 2 then run one after the other with that same
program, unless vmapping them is predicted to be faster. The prediction splits the measured
one-LR run into its FLOPs at MATMUL_EFFICIENCY x this machine's measured matmul peak (XLA's
cost analysis of one optimizer step, times the steps and seeds) and the rest, a per-step
overhead that vmapping pays once for all K; plus compiling the vmapped program (COMPILE_RATIO x
the one-LR program's compile time). The constants were measured on one 2-core CPU; on the
mnist5k MLP sweeps of the bench they pick the loop (docs/results/cpu_speed.md).
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
from jaxlab.train import core, step_loops
from jaxlab.train.tasks import Task, as_task

SCHEDULES = ("auto", "vmap", "loop")
COMPILE_RATIO = 1.6  # compile time of the 12-LR / 1-LR mnist5k MLP sweep program: 2.4 / 1.5 s
# Fraction of the matmul peak that training programs with large matmuls reach, in XLA-counted
# FLOPs: the mnist5k MLP at width 512 ran at 0.51 (12 LRs vmapped) and 0.55 (one LR) of the
# bench's GEMM peak (2-core AMD EPYC, 2026-12-06). 0.45 leaves a margin: a wrong 'vmap' costs
# more than a wrong 'loop'.
MATMUL_EFFICIENCY = 0.45


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


def step_flops(model: nn.Module, tx: optax.GradientTransformation, task: Task | str,
               train_batches: dict) -> float:
  """XLA's FLOP count of one optimizer step on one batch of train_batches [T, ...] (from the
  lowered program: nothing is compiled). A scan's cost analysis counts its body once, so the
  sweep's own programs cannot give the total."""
  task = as_task(task)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), train_batches)

  def start(b):
    params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(0), task.inputs(b))
    return params, tx.init(params), extra

  carry = jax.eval_shape(start, batch)
  lowered = jax.jit(step_loops.optimizer_step(model, tx, task)).lower(carry, batch)
  return float((lowered.cost_analysis() or {}).get("flops", 0.0))


def run_sweep(model: nn.Module, tx_fn: Callable[[jax.Array], optax.GradientTransformation],
              task: Task | str, lrs: Sequence[float], seeds: Sequence[int], train_batches: dict,
              eval_batch: dict, schedule: str = "auto") -> dict:
  """{'train_loss' [K, S, T], 'eval_loss' [K, S], 'schedule' (the one used for the LRs after the
  first two), 'estimate' (auto: the predicted seconds of those each way)}; every run is
  lr_sweep.make_sweep's."""
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
  parts, done = [], min(2, len(lrs))  # the first call pays one-time costs: time the second
  for k in range(done):
    t = time.perf_counter()
    parts.append(jax.block_until_ready(one(lrs[k:k + 1], seeds, train_batches, eval_batch)))
    run_s = time.perf_counter() - t
  rest, estimate = len(lrs) - done, {}
  if schedule == "auto" and rest > 1:
    steps = len(jax.tree.leaves(train_batches)[0])
    flops = step_flops(model, tx_fn(lrs[0]), task, train_batches) * steps * len(seeds)
    matmul_s = flops / (MATMUL_EFFICIENCY * matmul_peak_flops())
    estimate = {"loop": rest * run_s,
                "vmap": rest * matmul_s + max(run_s - matmul_s, 0.0) + COMPILE_RATIO * compile_s}
    if estimate["vmap"] < estimate["loop"]:
      schedule = "vmap"
      parts.append(sweep(lrs[done:], seeds, train_batches, eval_batch))
  if schedule != "vmap":
    schedule = "loop"
    parts += [one(lrs[k:k + 1], seeds, train_batches, eval_batch) for k in range(done, len(lrs))]
  return {"train_loss": np.concatenate([np.asarray(p[0]) for p in parts]),
          "eval_loss": np.concatenate([np.asarray(p[1]) for p in parts]),
          "schedule": schedule, "estimate": estimate}
