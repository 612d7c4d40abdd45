"""Pruning masks for jaxlab params: unstructured magnitude pruning (Han et al. 2015, "Learning
both weights and connections"; the masks of Frankle & Carbin 2019's lottery tickets), structured
removal of whole output units -- neurons, conv channels, attention heads -- ranked by the L2 norm
of their incoming weights (Li et al. 2017, "Pruning filters for efficient ConvNets", Sec. 3.1),
and `keep_masked`, an optax transform that keeps pruned entries at exactly zero in training.

A mask tree has the structure of the params: one bool array per leaf, True = kept; leaves a rule
does not touch get all-True masks. The output (unit) axis of every weight is its last axis.
Counts: a fraction s of n candidates prunes round(s * n) of them (half to even); equal scores
break by position (tree-leaf order, then row-major index): the earlier one is pruned first.
"""

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.param.meta import ParamInfo
from jaxlab.param.roles import HIDDEN, INPUT, READOUT

Predicate = Callable[[ParamInfo], bool]

UNIT_AXES = {"neurons": ("mlp",), "channels": ("conv_out",)}
"""kind -> logical names of the last (output) axis whose units `structured_masks` removes:
hidden neurons of MLPs and Transformer / ViT / ConvNeXt feed-forwards ('mlp'; the residual
stream 'embed' is never pruned), conv filters including depthwise ones ('conv_out')."""

NORM_AFTER = ((r"(^|/)conv_(\d+)$", r"\1norm_\2"), (r"(^|/)(stem|proj)$", r"\1\2_norm"),
              (r"(^|/)dwconv$", r"\1norm"))
"""(regex, replacement) on a weight's module path -> the module of the norm applied right after
it, in jaxlab's models: ResNet conv_i -> norm_i, stem -> stem_norm, proj -> proj_norm; ConvNeXt
stem -> stem_norm, dwconv -> norm (ConvNeXt's downsample_i_norm comes *before* downsample_i, so
no rule names it). Models without such a norm (MLP, Transformer, ViT feed-forwards) match none."""


def _is_info(x: Any) -> bool:
  return isinstance(x, ParamInfo)


def prunable(info: ParamInfo) -> bool:
  """Default rule: weight tensors (roles input / hidden / readout, >= 2 axes); never biases,
  norm gains or scalars."""
  return info.role in (INPUT, HIDDEN, READOUT) and len(info.names) >= 2


def num_pruned(n: int, sparsity: float) -> int:
  """How many of n candidates a fraction `sparsity` in [0, 1] prunes: round(sparsity * n)."""
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity must be in [0, 1]; got {sparsity}")
  return int(round(sparsity * n))


def _flat(params: Any, info: Any):
  """(keys 'a/b/kernel', leaves, infos, treedef) of params, info matched leaf by leaf."""
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  infos = jax.tree_util.tree_leaves(info, is_leaf=_is_info)
  if len(infos) != len(path_leaves) or not all(map(_is_info, infos)):
    raise ValueError(f"info has {len(infos)} ParamInfo leaves for {len(path_leaves)} params; "
                     "pass jaxlab.param.param_info(boxed_params) of the same model")
  keys = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in path_leaves]
  return keys, [leaf for _, leaf in path_leaves], infos, treedef


def _keep(scores: jax.Array, k: int) -> jax.Array:
  """Bool [n]: False at the k smallest scores (ties: the lower index goes first)."""
  order = jnp.argsort(scores, stable=True)
  return jnp.ones(scores.shape, bool).at[order[:k]].set(False)


def magnitude_masks(params: Any, info: Any, sparsity: float, scope: str = "global",
                    predicate: Predicate = prunable) -> Any:
  """Masks pruning the smallest-|w| fraction `sparsity` of the weights `predicate` selects:
  ranked over all of them together (scope='global') or within each tensor ('layerwise')."""
  keys, leaves, infos, treedef = _flat(params, info)
  chosen = [i for i, inf in enumerate(infos) if predicate(inf)]
  masks = [jnp.ones(jnp.shape(x), bool) for x in leaves]
  scores = [jnp.abs(jnp.asarray(leaves[i], jnp.float32)).ravel() for i in chosen]
  if scope == "global":
    keep = _keep(jnp.concatenate(scores), num_pruned(sum(s.size for s in scores), sparsity)) \
        if scores else None
    parts = jnp.split(keep, np.cumsum([s.size for s in scores])[:-1]) if scores else []
  elif scope == "layerwise":
    parts = [_keep(s, num_pruned(s.size, sparsity)) for s in scores]
  else:
    raise ValueError(f"scope must be 'global' or 'layerwise'; got {scope!r}")
  for i, part in zip(chosen, parts):
    masks[i] = part.reshape(jnp.shape(leaves[i]))
  return jax.tree_util.tree_unflatten(treedef, masks)


def _unit_norms(w: jax.Array) -> jax.Array:
  """L2 norm of each output unit's incoming weights (w[..., o])."""
  w = jnp.asarray(w, jnp.float32)
  return jnp.sqrt(jnp.sum(w * w, axis=tuple(range(w.ndim - 1))))


def structured_masks(params: Any, info: Any, sparsity: float, kind: str = "neurons",
                     num_heads: int | None = None, predicate: Predicate = prunable,
                     norm_after: Sequence[tuple[str, str]] = NORM_AFTER) -> Any:
  """Masks removing whole output units, in each eligible weight the fraction `sparsity` (at
  most all but one) of units whose incoming weights have the smallest L2 norm.

  kind='neurons' / 'channels': eligible weights end in a `UNIT_AXES[kind]` axis (2-D Dense
  kernels / conv kernels of >= 3 axes); a unit is the slice w[..., o] (a conv's HWIO filter).
  Masked with it: the 1-D params of the same module of that width (bias, a standardized conv's
  gain), and the gain and bias of the norm right after it (`norm_after` rules on the module
  path, used only where that module exists with the same width), so the unit's output is
  exactly zero even through a norm. The next layer's weights reading the unit stay unmasked.
  kind='heads': the fused attention qkv kernel ('embed', 'heads') holds columns
  [q | k | v] with q = num_heads * head_dim (head h: q columns [h*Dh, (h+1)*Dh)), then
  num_kv_heads * head_dim each for k and v; head_dim comes from the sibling `out` kernel
  ('heads', 'embed') of num_heads * head_dim rows. A head is ranked by the norm of its q
  columns; pruning it masks those q columns (and their qkv bias entries) and the head's rows of
  `out`, so its contribution to the residual stream is exactly zero (zeroing q alone would
  leave a uniform average of v); k and v, which grouped-query heads share, stay.
  The readout's outputs (classes / vocab) are never pruned.
  """
  if kind not in (*UNIT_AXES, "heads"):
    raise ValueError(f"kind must be one of {', '.join((*UNIT_AXES, 'heads'))}; got {kind!r}")
  if kind == "heads" and not num_heads:
    raise ValueError("kind='heads' needs num_heads (the model's query heads)")
  keys, leaves, infos, treedef = _flat(params, info)
  index = {k: i for i, k in enumerate(keys)}
  masks: list[Any] = [jnp.ones(jnp.shape(x), bool) for x in leaves]

  def restrict(i: int, mask: jax.Array) -> None:
    masks[i] = masks[i] & jnp.broadcast_to(mask, masks[i].shape)

  for i, (key, w, inf) in enumerate(zip(keys, leaves, infos)):
    if not predicate(inf) or inf.role == READOUT:
      continue
    module = key.rpartition("/")[0]
    if kind == "heads":
      out = index.get(f"{module.rpartition('/')[0]}/out/kernel")
      if inf.names != ("embed", "heads") or out is None:
        continue
      keep = _head_keep(w, leaves[out], num_heads, sparsity, key)
      head_dim = leaves[out].shape[0] // num_heads
      cols = jnp.concatenate([jnp.repeat(keep, head_dim),
                              jnp.ones(w.shape[-1] - num_heads * head_dim, bool)])
      restrict(i, cols)
      restrict(out, jnp.repeat(keep, head_dim)[:, None])
      bias = index.get(f"{module}/bias")
      if bias is not None and jnp.shape(leaves[bias]) == cols.shape:
        restrict(bias, cols)
      continue
    if inf.names[-1] not in UNIT_AXES[kind] or (w.ndim == 2) != (kind == "neurons"):
      continue
    norms = _unit_norms(w)
    units = norms.shape[0]
    keep = _keep(norms, min(num_pruned(units, sparsity), units - 1))
    restrict(i, keep)
    companions = [module] + [re.sub(pat, rep, module) for pat, rep in norm_after
                             if re.search(pat, module)]
    for j, (other, x) in enumerate(zip(keys, leaves)):
      if j != i and other.rpartition("/")[0] in companions and jnp.shape(x) == (units,):
        restrict(j, keep)
  return jax.tree_util.tree_unflatten(treedef, masks)


def _head_keep(qkv: jax.Array, out: jax.Array, num_heads: int, sparsity: float,
               key: str) -> jax.Array:
  """Bool [num_heads]: the heads kept, ranked by the L2 norm of their q columns."""
  hd = out.shape[0]
  if hd % num_heads or (qkv.shape[-1] - hd) % (2 * (hd // num_heads)):
    raise ValueError(f"{key}: width {qkv.shape[-1]} with out rows {hd} does not fit "
                     f"num_heads={num_heads} ([q | k | v], q = num_heads * head_dim)")
  q = jnp.asarray(qkv[..., :hd], jnp.float32).reshape(-1, num_heads, hd // num_heads)
  norms = jnp.sqrt(jnp.sum(q * q, axis=(0, 2)))
  return _keep(norms, min(num_pruned(num_heads, sparsity), num_heads - 1))


def apply_masks(params: Any, masks: Any) -> Any:
  """params with the masked-out (False) entries set to exactly zero."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_report(params: Any, masks: Any = None) -> dict:
  """Fraction of zeros per tensor and over all of them (of apply_masks(params, masks) when masks
  are given, whose False entries are also counted as 'pruned'), JSON-serialisable:
  {"tensors": {"a/b/kernel": {"shape", "size", "zeros", "sparsity"[, "pruned"]}},
   "global": {"size", "zeros", "sparsity"[, "pruned"]}}."""
  if masks is not None:
    params = apply_masks(params, masks)
  path_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  mask_leaves = [None] * len(path_leaves) if masks is None else jax.tree_util.tree_leaves(masks)
  tensors, total = {}, {"size": 0, "zeros": 0}
  if masks is not None:
    total["pruned"] = 0
  for (path, p), m in zip(path_leaves, mask_leaves):
    p = np.asarray(p)
    row = {"shape": list(p.shape), "size": int(p.size), "zeros": int(np.sum(p == 0))}
    if m is not None:
      row["pruned"] = int(np.sum(~np.asarray(m)))
    row["sparsity"] = row["zeros"] / max(row["size"], 1)
    tensors["/".join(str(getattr(k, "key", k)) for k in path)] = row
    for name in total:
      total[name] += row[name]
  total["sparsity"] = total["zeros"] / max(total["size"], 1)
  return {"tensors": tensors, "global": total}


class KeepMaskedState(NamedTuple):
  """The masks, held in the optimizer state (so jit gets them as arguments, not constants, and
  checkpoints and sharding carry them like the params)."""

  masks: Any


def keep_masked(masks: Any) -> optax.GradientTransformation:
  """Zeroes the updates of masked-out entries; place it last in a chain (after weight decay and
  the learning rate) so pruned weights stay exactly zero: optax.chain(optax.adamw(lr),
  keep_masked(masks))."""

  def init_fn(params):
    del params
    return KeepMaskedState(jax.tree.map(jnp.asarray, masks))

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, state.masks)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
