"""Shared by the model tests: a fast init key and full-batch Adam on one fixed batch."""

import jax
import optax

from jaxlab import param

# rbg keys: threefry initialisers take seconds to compile on CPU.
KEY = jax.random.key(0, impl="rbg")


def fit(model, inputs, targets, steps=25, lr=1e-2):
  """(first, final) cross-entropy of `steps` full-batch Adam steps, compiled as one scan."""
  params = param.unbox(jax.jit(model.init)(KEY, inputs)["params"])
  opt = optax.adam(lr)

  def loss(p):
    logits = model.apply({"params": p}, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def step(carry, _):
    p, s = carry
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = opt.update(grads, s)
    return (optax.apply_updates(p, updates), s), value

  @jax.jit
  def run(p):
    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return losses[0], loss(p)

  return tuple(float(v) for v in run(params))
