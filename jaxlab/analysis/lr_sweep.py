"""Learning-rate sweeps with every learning rate (and seed) of one width in one compiled program.

The train loop of one (lr, seed) is a `lax.scan` over pre-stacked batches; `jax.vmap` over seeds
and then over learning rates turns K x S runs into one XLA program whose matmuls are batched,
which is what makes a grid of widths x LRs affordable (Everett et al. 2024 and Tensor Programs V
sweep 10+ LRs per width). All runs of a width see the same batches in the same order; seeds
change the initialisation only.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.train import compile_options, core, step_loops
from jaxlab.train.tasks import Task, as_task


def stack_batches(iterator, steps: int) -> dict:
  """The next `steps` batches of a data iterator stacked on a leading axis."""
  batches = [next(iterator) for _ in range(steps)]
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def lr_mesh(num_lrs: int) -> Mesh | None:
  """A 1-D mesh ('lr') over the largest number of devices dividing num_lrs (every process's, in
  a multi-process job: the LR axis is spread over hosts too); None on one device (or when only
  one divides it)."""
  n = max(d for d in range(1, jax.device_count() + 1) if num_lrs % d == 0)
  return Mesh(np.array(jax.devices()[:n]), ("lr",)) if n > 1 else None


def scan_train(model: nn.Module, tx: optax.GradientTransformation, task: Task, seed: jax.Array,
               train_batches: dict) -> tuple[Any, dict, jax.Array]:
  """(final params, final extra, train losses [T]): init from `seed`, then one optimizer step
  (jaxlab.train.core) per stacked batch as a lax.scan (traceable: jit/vmap it). The
  quantization state (extra) is carried through the scan."""
  example = task.inputs(jax.tree.map(lambda x: x[0], train_batches))
  params, extra = core.init_params_and_extra(model, jax.random.PRNGKey(seed), example)
  (params, _, extra), losses = step_loops.scan_steps(
      step_loops.optimizer_step(model, tx, task), (params, tx.init(params), extra), train_batches)
  return params, extra, losses


def make_sweep(model: nn.Module, tx_fn: Callable[[jax.Array], optax.GradientTransformation],
               task: Task | str, mesh: Mesh | None = None) -> Callable:
  """jitted (lrs [K], seeds [S], train_batches [T, ...], eval_batch) -> (train losses [K, S, T],
  final eval loss [K, S]); non-finite losses stay in the output (diverged runs). With a mesh
  (axis 'lr', e.g. from `lr_mesh`) the K runs are split over its devices: each device trains
  K / n learning rates, batches are replicated. In a multi-process job every process passes the
  same (whole) inputs and gets its devices' rows of the outputs (`to_host` gathers them).
  `task`: a Task or its name. On CPU it compiles with compile_options.SHORT_CPU_PROGRAM."""
  task = as_task(task)

  def one_run(lr, seed, train_batches, eval_batch):
    params, extra, losses = scan_train(model, tx_fn(lr), task, seed, train_batches)
    return losses, core.loss_and_metrics(model, params, extra, eval_batch, task)[0]

  over_seeds = jax.vmap(one_run, in_axes=(None, 0, None, None))
  sweep = jax.vmap(over_seeds, in_axes=(0, None, None, None))
  if mesh is None:
    return jax.jit(sweep, compiler_options=compile_options.for_short_programs())
  by_lr, replicated = NamedSharding(mesh, P("lr")), NamedSharding(mesh, P())
  shardings = (by_lr, replicated, replicated, replicated)
  compiled = jax.jit(sweep, in_shardings=shardings, out_shardings=(by_lr, by_lr),
                     compiler_options=compile_options.for_short_programs(mesh.devices.flat))

  def run(*args):
    return compiled(*(jax.tree.map(lambda x, s=s: _place(x, s), a)
                      for a, s in zip(args, shardings)))

  return run


def _place(x, sharding: NamedSharding) -> jax.Array:
  """A host value that is the same on every process -> a jax.Array laid out by `sharding` (jit
  takes no numpy input with a non-replicated sharding in a multi-process job)."""
  if isinstance(x, jax.Array):
    return x
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) jax.Array as numpy, on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def mean_over_seeds(final_loss: np.ndarray) -> np.ndarray:
  """[K, S] final losses -> [K] means, a diverged (non-finite) seed making its LR's mean inf."""
  return np.where(np.isfinite(final_loss), final_loss, np.inf).mean(axis=1)


def lr_sweep(model: nn.Module, tx_fn: Callable[[jax.Array], optax.GradientTransformation],
             task: Task | str, lrs: Sequence[float], seeds: Sequence[int], train_batches: dict,
             eval_batch: dict) -> dict:
  """{'lrs', 'seeds', 'train_loss' [K, S, T], 'eval_loss' [K, S], 'best_lr'} as numpy/python."""
  run = make_sweep(model, tx_fn, task, mesh=lr_mesh(len(lrs)))
  train, final = run(jnp.asarray(lrs, jnp.float32), jnp.asarray(seeds, jnp.uint32),
                     train_batches, eval_batch)
  train, final = to_host(train), to_host(final)
  mean_final = mean_over_seeds(final)
  return {"lrs": list(map(float, lrs)), "seeds": list(map(int, seeds)), "train_loss": train,
          "eval_loss": final, "best_lr": float(lrs[int(np.argmin(mean_final))])}
