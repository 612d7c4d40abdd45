"""A learning-rate sweep that picks how to run its K runs: all vmapped in one program, or one
after the other (on several devices: n at a time, one per device).

Vmapping turns each matmul into a batched matmul. On XLA:CPU that pays where a step is mostly
per-op overhead (small widths) and loses once the matmuls are large (the 2-layer mnist5k MLP
at width 512: 4.03 ms per LR-step vmapped vs 3.76 one at a time; docs/results/cpu_speed.md).
Compilation counts too: a short sweep of small models spends as long compiling as training.

schedule='auto' therefore first runs two chunks of LRs (a chunk: one LR per device) with the
chunk program (init, scan, eval fused; real work, nothing is thrown away) and times the first
call (compilation included) and the second. The other chunks then run one after the other with
that same program, unless vmapping them is predicted to be faster. The prediction splits the
measured chunk into its FLOPs at MATMUL_EFFICIENCY x this machine's measured matmul peak (XLA's
cost analysis of one optimizer step, times the steps and seeds) and the rest, a per-step
overhead that vmapping pays once for all K; plus compiling the vmapped program (COMPILE_RATIO x
the chunk program's compile time). The constants were measured on one 2-core CPU; on the
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
from jax.sharding import Mesh

from jaxlab.analysis.lr_sweep import make_sweep, to_host
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
              eval_batch: dict, schedule: str = "auto", mesh: Mesh | None = None) -> dict:
  """{'train_loss' [K, S, T], 'eval_loss' [K, S], 'schedule' (the one used for the LRs after the
  first two chunks), 'estimate' (auto: the predicted seconds of those each way)}; every run is
  lr_sweep.make_sweep's. With a mesh (axis 'lr' over n devices, n dividing K: `lr_mesh`) a
  chunk is n LRs, one per device, and 'vmap' splits the rest over the devices; without one a
  chunk is one LR. In a multi-process job 'auto' means 'vmap' (every process must run the
  same programs, and their timings differ)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}: valid: {', '.join(SCHEDULES)}")
  lrs = np.asarray(lrs, np.float32)
  seeds = np.asarray(seeds, np.uint32)
  n = mesh.size if mesh is not None else 1
  if len(lrs) % n:
    raise ValueError(f"{len(lrs)} learning rates do not split over the mesh's {n} devices")
  if schedule == "auto" and jax.process_count() > 1:
    schedule = "vmap"
  sweep = make_sweep(model, tx_fn, task, mesh=mesh)

  def run(chunk):
    return jax.block_until_ready(sweep(chunk, seeds, train_batches, eval_batch))

  estimate = {}
  if schedule == "vmap":
    parts = [run(lrs)]
  else:
    chunks = [lrs[k:k + n] for k in range(0, len(lrs), n)]
    parts, seconds = [], []
    for chunk in chunks[:2]:  # the first call compiles: the second is the run time
      t = time.perf_counter()
      parts.append(run(chunk))
      seconds.append(time.perf_counter() - t)
    rest = chunks[2:]
    if schedule == "auto" and len(rest) > 1:
      run_s, compile_s = seconds[-1], max(seconds[0] - seconds[-1], 0.0)
      steps = len(jax.tree.leaves(train_batches)[0])
      flops = step_flops(model, tx_fn(lrs[0]), task, train_batches) * steps * len(seeds)
      matmul_s = flops / (MATMUL_EFFICIENCY * matmul_peak_flops())  # one LR on the whole CPU
      estimate = {"loop": len(rest) * run_s,
                  "vmap": (len(rest) * n * matmul_s + max(run_s - n * matmul_s, 0.0)
                           + COMPILE_RATIO * compile_s)}
      if estimate["vmap"] < estimate["loop"]:
        schedule = "vmap"
        parts.append(run(np.concatenate(rest)))
    if schedule != "vmap":
      schedule = "loop"
      parts += [run(chunk) for chunk in rest]
  return {"train_loss": np.concatenate([to_host(p[0]) for p in parts]),
          "eval_loss": np.concatenate([to_host(p[1]) for p in parts]),
          "schedule": schedule, "estimate": estimate}
