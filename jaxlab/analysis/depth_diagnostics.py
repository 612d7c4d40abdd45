"""Depth diagnostics: how the residual stream, the gradients and the usefulness of each block
vary with depth.

Residual blocks are the submodules whose name fully matches `pattern` (default 'block_<i>',
as in TransformerLM and ViT), ordered by i; each block's __call__ takes the residual stream as
its first positional argument and returns the updated stream. All functions are pure and
traceable (wrap them in jax.jit with the model closed over), except `layer_removal_loss_delta`,
which jits one forward pass itself (the removed block is a traced index). `depth_metrics`
flattens them into a metrics.jsonl row. Every function applying the model takes `extra`
(TrainState.extra; None: params only), which carries a stateful quantization policy's state.
"""

import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab import quant
from jaxlab.depth.rescaling import BLOCK_PATTERN, block_index


def _index(module: nn.Module, pattern: str) -> int | None:
  m = re.fullmatch(pattern, module.name or "")
  return int(m.group(1)) if m else None


def _ordered(found: dict[int, Any], pattern: str) -> list[Any]:
  if not found:
    raise ValueError(f"no module or params key matching {pattern!r}; depth diagnostics need "
                     f"residual blocks named e.g. 'block_0' (or pass pattern=...)")
  idx = sorted(found)
  if idx != list(range(len(idx))):
    raise ValueError(f"block indices {idx} are not 0..{len(idx) - 1}")
  return [found[i] for i in idx]


def block_outputs(model: nn.Module, params: Any, inputs: jax.Array, *,
                  pattern: str = BLOCK_PATTERN, extra: dict | None = None) -> list[jax.Array]:
  """The __call__ output of every block, in depth order (flax capture_intermediates)."""
  def is_block(mdl, method_name):
    return method_name == "__call__" and _index(mdl, pattern) is not None

  _, state = model.apply(quant.model_variables(params, extra), inputs,
                         capture_intermediates=is_block, mutable=["intermediates"])
  found = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.get("intermediates", {})):
    keys = [str(getattr(k, "key", k)) for k in path]
    i = block_index(keys[:-2][-1:], pattern)  # [..., 'block_i', '__call__', 0]
    if i is not None and keys[-2] == "__call__":
      if i in found:
        raise ValueError(f"two modules match {pattern!r} with index {i}")
      found[i] = leaf
  return _ordered(found, pattern)


def residual_stream(model: nn.Module, params: Any, inputs: jax.Array, *,
                    pattern: str = BLOCK_PATTERN, extra: dict | None = None) -> jax.Array:
  """[L + 1, *stream shape]: x^(l) = the input of block l for l < L, x^(L) = the output of the
  last block (the stream before any final norm). Block inputs are recorded with a flax method
  interceptor."""
  ins, outs = {}, {}

  def record(next_fun, args, kwargs, context):
    i = _index(context.module, pattern) if context.method_name == "__call__" else None
    if i is None:
      return next_fun(*args, **kwargs)
    if not args:
      raise ValueError(f"block {context.module.name} got no positional residual-stream input")
    if i in ins:
      raise ValueError(f"two calls of modules matching {pattern!r} with index {i}")
    ins[i] = args[0]
    outs[i] = next_fun(*args, **kwargs)
    return outs[i]

  with nn.intercept_methods(record):
    model.apply(quant.model_variables(params, extra), inputs)
  stream = _ordered(ins, pattern) + [outs[max(outs)]]
  return jnp.stack([x.astype(jnp.float32) for x in stream])


def block_output_variance(model: nn.Module, params: Any, inputs: jax.Array, *,
                          pattern: str = BLOCK_PATTERN,
                          extra: dict | None = None) -> dict[str, jax.Array]:
  """{'variance': [L] variance of the residual stream after each block (over all entries:
  batch, positions, features), 'last_first_ratio': variance[-1] / variance[0]}."""
  var = jnp.stack([jnp.var(y.astype(jnp.float32))
                   for y in block_outputs(model, params, inputs, pattern=pattern, extra=extra)])
  return {"variance": var, "last_first_ratio": var[-1] / var[0]}


def _block_subtrees(tree: Any, pattern: str) -> list[Any]:
  """The top-level subtrees whose key matches `pattern`, in block order."""
  return _ordered({i: sub for key, sub in tree.items()
                   if (i := block_index([key], pattern)) is not None}, pattern)


def per_layer_grad_norms(grads: Any, *, pattern: str = BLOCK_PATTERN) -> dict[str, jax.Array]:
  """{'norms': [L] L2 norm of all gradients under each top-level block key, 'max_min_ratio',
  'cv': std / mean of the norms (population std)}. Other top-level keys are ignored."""
  norms = jnp.stack([jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                  for g in jax.tree.leaves(sub)))
                     for sub in _block_subtrees(grads, pattern)])
  return {"norms": norms, "max_min_ratio": jnp.max(norms) / jnp.min(norms),
          "cv": jnp.std(norms) / jnp.mean(norms)}


def angular_distance(model: nn.Module, params: Any, inputs: jax.Array, n: int = 1, *,
                     pattern: str = BLOCK_PATTERN, extra: dict | None = None) -> jax.Array:
  """[L - n + 1]: entry l is the mean over tokens of arccos(cos(x^(l), x^(l+n))) / pi between
  the residual stream entering block l and block l + n (x^(L) = the last block's output);
  Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers" (they use the
  last token; here every token counts). 0 = same direction, 1 = opposite."""
  xs = residual_stream(model, params, inputs, pattern=pattern, extra=extra)
  num_layers = xs.shape[0] - 1
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_layers:
    raise ValueError(f"n must be an int in 1..{num_layers} (the number of blocks), got {n!r}")
  a, b = xs[:-n], xs[n:]
  cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
  dist = jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi
  return jnp.mean(dist.reshape(dist.shape[0], -1), axis=1)


def _skip_block(skip: jax.Array, pattern: str, seen: set):
  """A flax interceptor making block `skip` (a traced index; -1 = none) the identity: its
  output is replaced by its residual-stream input (selected with jnp.where, so one compiled
  forward serves every choice of block)."""
  def maybe_skip(next_fun, args, kwargs, context):
    i = _index(context.module, pattern) if context.method_name == "__call__" else None
    if i is None:
      return next_fun(*args, **kwargs)
    if not args:
      raise ValueError(f"block {context.module.name} got no positional residual-stream input")
    seen.add(i)
    out = next_fun(*args, **kwargs)
    if jnp.shape(out) != jnp.shape(args[0]):
      raise ValueError(f"block {context.module.name} maps shape {jnp.shape(args[0])} to "
                       f"{jnp.shape(out)}; removing it needs a shape-preserving residual block")
    return jnp.where(skip == i, args[0], out)
  return maybe_skip


def layer_removal_loss_delta(model: nn.Module, params: Any, batch: dict,
                             loss_fn: Callable[[jax.Array, dict], jax.Array], *,
                             inputs_key: str = "inputs",
                             pattern: str = BLOCK_PATTERN,
                             extra: dict | None = None) -> dict[str, jax.Array]:
  """{'base_loss': loss of the full model, 'loss_delta': [L] loss without block l minus the
  base loss}; loss_fn(model output, batch) -> scalar, the model reads batch[inputs_key].

  Removal = the block made the identity: a flax method interceptor returns the block's
  residual-stream input instead of its output, i.e. exactly the model with that block deleted
  and every other parameter kept, whatever the block's norm placement or residual form.
  (Zeroing the branch output projections, attn/out and mlp/down, would be the same only for
  Pre-LN blocks with a plain x + r * f(x) residual; it is not used.) Blocks are found by
  module name; raises ValueError when a block's params key has no matching module call.
  """
  if inputs_key not in batch:
    raise ValueError(f"batch has no key {inputs_key!r}; keys: {sorted(batch)}")
  num_layers = len(_block_subtrees(params, pattern))
  seen = set()

  @jax.jit
  def loss(params, extra, batch, skip):
    with nn.intercept_methods(_skip_block(skip, pattern, seen)):
      return loss_fn(model.apply(quant.model_variables(params, extra), batch[inputs_key]), batch)

  losses = jnp.stack([loss(params, extra, batch, jnp.int32(i)) for i in range(-1, num_layers)])
  if seen != set(range(num_layers)):
    raise ValueError(f"params have blocks 0..{num_layers - 1} but the modules called were "
                     f"{sorted(seen)} (pattern {pattern!r})")
  return {"base_loss": losses[0], "loss_delta": losses[1:] - losses[0]}


def depth_metrics(model: nn.Module, params: Any, inputs: jax.Array, *, grads: Any = None,
                  n: int = 1, batch: dict | None = None, loss_fn: Callable | None = None,
                  prefix: str = "depth", pattern: str = BLOCK_PATTERN,
                  extra: dict | None = None) -> dict[str, jax.Array]:
  """Flat {name: scalar} for metrics.jsonl: '<prefix>/block_var/block_<i>',
  '<prefix>/block_var_last_first', '<prefix>/angular_distance_n<n>/block_<l>', and with grads
  '<prefix>/grad_norm/block_<i>', '<prefix>/grad_norm_max_min', '<prefix>/grad_norm_cv', and
  with batch + loss_fn '<prefix>/removal_loss_delta/block_<i>'."""
  out = {}
  var = block_output_variance(model, params, inputs, pattern=pattern, extra=extra)
  out.update({f"{prefix}/block_var/block_{i}": v for i, v in enumerate(var["variance"])})
  out[f"{prefix}/block_var_last_first"] = var["last_first_ratio"]
  dist = angular_distance(model, params, inputs, n, pattern=pattern, extra=extra)
  out.update({f"{prefix}/angular_distance_n{n}/block_{i}": d for i, d in enumerate(dist)})
  if grads is not None:
    g = per_layer_grad_norms(grads, pattern=pattern)
    out.update({f"{prefix}/grad_norm/block_{i}": v for i, v in enumerate(g["norms"])})
    out[f"{prefix}/grad_norm_max_min"] = g["max_min_ratio"]
    out[f"{prefix}/grad_norm_cv"] = g["cv"]
  if (batch is None) != (loss_fn is None):
    raise ValueError("layer-removal metrics need both batch and loss_fn (or neither)")
  if batch is not None:
    r = layer_removal_loss_delta(model, params, batch, loss_fn, pattern=pattern, extra=extra)
    out.update({f"{prefix}/removal_loss_delta/block_{i}": d
                for i, d in enumerate(r["loss_delta"])})
  return out
