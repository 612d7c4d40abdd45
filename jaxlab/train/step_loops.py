"""Many optimizer steps over pre-stacked batches [T, ...]: as one `lax.scan` (traceable, so it
can be vmapped over seeds or learning rates), or as a Python loop over jitted chunks of unrolled
steps.

Why both: XLA:CPU leaves the gradient convolutions of a conv net inside a while-loop body in
their non-canonical forms (weight gradient f01b_i01o->01bf, input gradient b01f_01oi->b01f) and
runs them on a slow generic path; unrolled, every convolution is canonicalised to
b01f_01io->b01f (jax-ml/jax#12868). Measured on ResNet-8 / mnist5k, batch 128, 2-core AMD EPYC:
1.67 s per step in a scan, 0.16 in a Python loop of a jitted step, 0.11 in chunks of 5 unrolled
steps. MLPs and Transformers have no convolutions and lose nothing to the scan.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.train import core
from jaxlab.train.tasks import Task

Step = Callable[[Any, dict], tuple[Any, jax.Array]]


def optimizer_step(model: nn.Module, tx: optax.GradientTransformation, task: Task) -> Step:
  """(carry, batch) -> (carry, loss): one step of `tx` on the mean loss; carry is
  (params, opt_state, extra) with the quantization state advanced in extra."""

  def step(carry, batch):
    params, opt_state, extra = carry
    loss, _, grads, extra = core.loss_and_grads(model, params, extra, batch, task)
    params, opt_state, _ = core.apply_update(tx, params, opt_state, grads)
    return (params, opt_state, extra), loss

  return step


def scan_steps(step: Step, carry: Any, batches: dict) -> tuple[Any, jax.Array]:
  """(final carry, losses [T]) of `step` over batches [T, ...] as one lax.scan (traceable)."""
  return jax.lax.scan(step, carry, batches)


def chunked_steps(step: Step, carry: Any, batches: dict, chunk: int = 5) -> tuple[Any, jax.Array]:
  """What `scan_steps` returns, computed as jitted calls of `chunk` unrolled steps (the last call
  takes the remainder). Not traceable. The calls donate a private copy of `carry`."""
  return chunk_runner(step)(carry, batches, chunk)


def chunk_runner(step: Step) -> Callable[[Any, dict, int], tuple[Any, jax.Array]]:
  """`chunked_steps` for one `step` with its jitted chunk built once: call it for several runs
  (e.g. seeds) and the chunk program compiles once, not once per run."""
  run = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs, unroll=True), donate_argnums=0)

  def run_all(carry: Any, batches: dict, chunk: int) -> tuple[Any, jax.Array]:
    if chunk < 1:
      raise ValueError(f"chunk={chunk}: must be >= 1")
    steps = len(jax.tree.leaves(batches)[0])
    losses = []
    carry = jax.tree.map(jnp.array, carry)  # a private copy: donation must not delete the caller's
    for start in range(0, steps, chunk):
      carry, loss = run(carry, jax.tree.map(lambda x, s=start: x[s:s + chunk], batches))
      losses.append(loss)
    return carry, jnp.concatenate(losses) if losses else jnp.zeros((0,), jnp.float32)

  return run_all


def has_convolution(model: nn.Module, example: jax.Array) -> bool:
  """Whether the model's forward pass on `example` traces to a convolution."""
  jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.PRNGKey(0), x))(example)
  return "conv_general_dilated" in str(jaxpr)


CONV_CHUNK = 5  # unrolled steps per jitted call for conv nets on CPU


def chunk_for(convolves: bool) -> int:
  """Unrolled steps per call: CONV_CHUNK for a model that convolves, on CPU (see the module
  docstring), 0 (one lax.scan) otherwise."""
  return CONV_CHUNK if convolves and jax.default_backend() == "cpu" else 0


def default_chunk(model: nn.Module, example: jax.Array) -> int:
  """chunk_for(whether `model` convolves on `example`)."""
  return chunk_for(has_convolution(model, example))
