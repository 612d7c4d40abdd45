"""Permutation symmetries of a network, derived from its traced computation.

Hidden units can be reordered without changing what a network computes (Hecht-Nielsen 1990;
Entezari et al. 2022; Ainsworth et al. 2023, "Git Re-Basin"): a permutation of the hidden units of
a layer applied to that layer's output axis and to every axis that reads those units. Which
parameter axes must move together is a property of the computation, so it is derived here from
the jaxpr of `apply_fn(variables, *inputs)` (the axis graph: jaxlab.weights.axis_graph), not
written by hand per architecture:

1. every (array, axis) of the jaxpr is a node; each equation joins the nodes it ties (an
   elementwise op joins its operands' axes, a dot_general its contracted and batch axes, a conv
   its channel axes, ...; `jit`, `custom_jvp`/`custom_vjp` and platform-dependent `cond` are
   followed inside). A union-find gives classes of axes that must share one permutation.
2. a reshape that splits an axis (heads x head_dim), `split` and `concatenate` record the axis as a
   product or concatenation of other classes: the fused qkv axis of attention is
   [q heads x head_dim | k ... | v ...], so heads are permuted as blocks.
3. a class is fixed (never permuted) when it touches the inputs or outputs, a constant with more
   than one entry along it (RoPE tables, positions), or an op that is not equivariant along it
   (slices, pads, gathers, spatial conv axes, argmax, any primitive not understood); a composite
   class fixes its parts.

The remaining classes that reach a parameter are the permutation groups. For the residual
stream of a Transformer every `embed` axis lands in one class; each block's MLP hidden units are a
class; attention heads a class whose permutation acts on blocks of head_dim.
"""

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.weights import axis_graph

Expr = Any  # None | ("perm", group) | ("fixed", size) | ("product", (Expr, ...)) | ("concat", ...)

@dataclasses.dataclass(frozen=True)
class PermutationSpec:
  """groups: name -> number of units; axes: parameter path -> one Expr per axis saying how that
  axis moves (None: not at all; ("perm", g): by group g's permutation; ("product", parts) /
  ("concat", parts): a reshaped / concatenated axis, each part moving by its own Expr)."""

  groups: Mapping[str, int]
  axes: Mapping[str, tuple]

  def outer_groups(self) -> list[str]:
    """The groups that some axis is permuted by directly or as the leading factor of a product
    (hidden units, channels, heads), leaving out those seen only inside a product (head_dim
    within a head): the groups alignment matches by default, as Git Re-Basin does."""
    found: set = set()

    def visit(ex, inner=False):
      if ex is None or ex[0] == "fixed":
        return
      if ex[0] == "perm":
        if not inner:
          found.add(ex[1])
      elif ex[0] == "concat":
        for q in ex[1]:
          visit(q, inner)
      else:
        for i, q in enumerate(ex[1]):
          visit(q, inner or i > 0)

    for exprs in self.axes.values():
      for ex in exprs:
        visit(ex)
    return [g for g in self.groups if g in found]

  def members(self, group: str) -> list[tuple[str, int]]:
    """(parameter path, axis) pairs whose Expr mentions `group`."""
    return [(path, k) for path, exprs in self.axes.items() for k, ex in enumerate(exprs)
            if group in groups_in(ex)]


def groups_in(ex: Expr) -> set:
  if ex is None or ex[0] == "fixed":
    return set()
  if ex[0] == "perm":
    return {ex[1]}
  return set().union(*(groups_in(part) for part in ex[1]))


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@dataclasses.dataclass
class Analysis:
  """What permutation_spec found: the spec, the traced program and, for its top-level arrays,
  which axis carries which group's units (activation matching reads those)."""

  spec: PermutationSpec
  closed: Any  # the ClosedJaxpr of apply_fn(variables, *inputs)
  num_variables: int
  activation_axes: list  # (var, axis, group) of top-level equation outputs


def analyse(apply_fn: Callable, variables: Any, *inputs: Any,
            platform: str | None = None) -> Analysis:
  """Traces apply_fn(variables, *inputs) and derives its permutation groups (module docstring)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  with jax.disable_jit():  # inner jax.jit calls are inlined: their arrays are top-level too
    closed = jax.make_jaxpr(lambda v, *xs: apply_fn(v, *xs))(variables, *inputs)
  jaxpr = closed.jaxpr
  axes = axis_graph.Axes()
  tracer = axis_graph.Tracer(axes, platform or jax.default_backend())
  param_vars, input_vars = jaxpr.invars[:len(leaves)], jaxpr.invars[len(leaves):]
  tracer.jaxpr(jaxpr, closed.consts)
  for v in (*input_vars, *jaxpr.outvars):
    tracer.fix_all(v)
  spec, names = _resolve(axes, [(path_str(p), v) for (p, _), v in zip(leaves, param_vars)])
  spec, rename = _named(spec)
  acts = []
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      if not axis_graph.is_var(v) or not hasattr(v.aval, "shape"):
        continue
      for k, size in enumerate(axis_graph.shape_of(v)):
        key = (0, v, k)
        if size > 1 and key in axes.parent and axes.find(key) in names:
          acts.append((v, k, rename[names[axes.find(key)]]))
  return Analysis(spec, closed, len(leaves), acts)


def permutation_spec(apply_fn: Callable, variables: Any, *inputs: Any,
                     platform: str | None = None) -> PermutationSpec:
  """The permutation groups of `apply_fn(variables, *inputs)` (e.g. `model.apply`, variables
  {'params': ..., 'batch_stats': ...}; arrays or ShapeDtypeStructs). Every leaf of `variables`
  gets its axes' Exprs (batch statistics move with their channels)."""
  return analyse(apply_fn, variables, *inputs, platform=platform).spec


def _resolve(ax: axis_graph.Axes, params: list) -> tuple[PermutationSpec, dict]:
  # class-level fixed marks and definitions
  fixed = {ax.find(k) for k in ax.fixed}
  defs: dict = {}
  for node, ds in ax.defs.items():
    for kind, parts in ds:
      defs.setdefault(ax.find(node), []).append((kind, [ax.find(q) for q in parts]))
  for root, ds in list(defs.items()):  # two different definitions of one class: keep none
    if len({(kind, tuple(parts)) for kind, parts in ds}) > 1:
      fixed.add(root)
  changed = True
  while changed:  # a fixed composite fixes its parts
    changed = False
    for root, ds in defs.items():
      if root in fixed:
        for _, parts in ds:
          for q in parts:
            if q not in fixed:
              fixed.add(q)
              changed = True
  names: dict = {}
  groups: dict = {}

  def expr(root, depth=0) -> Expr:
    if root in defs and root not in fixed and depth < 8:
      kind, parts = defs[root][0]
      sub = tuple(expr(q, depth + 1) for q in parts)
      return ("fixed", ax.size[root]) if all(q[0] == "fixed" for q in sub) else (kind, sub)
    if root in fixed or root in defs:
      return ("fixed", ax.size[root])
    if root not in names:
      names[root] = f"g{len(names)}"
      groups[names[root]] = ax.size[root]
    return ("perm", names[root])

  out = {}
  for path, var in params:
    exprs = []
    for k, s in enumerate(axis_graph.shape_of(var)):
      ex = expr(ax.find(ax.node(var, k))) if s > 1 else None
      exprs.append(None if ex is None or ex[0] == "fixed" else ex)
    out[path] = tuple(exprs)
  return PermutationSpec(groups, out), names


def _named(spec: PermutationSpec) -> tuple[PermutationSpec, dict]:
  """Renames g0, g1, ... after the layer that produces the units: the module path of the first
  parameter whose last axis is exactly that group ('dense_0', 'stem', 'block_0/mlp/up'); else
  (heads inside a fused axis) the longest common module path of its parameters + '/units'."""
  rename = {}
  for g in spec.groups:
    producers = [_module(p) for p, exprs in spec.axes.items()
                 if exprs and exprs[-1] == ("perm", g) and p.split("/")[-1] != "bias"]
    producers = [m for m in dict.fromkeys(producers) if not _is_norm(m, spec, g)]
    if len(producers) == 1:
      base = producers[0]
    elif producers:  # several layers write these units: a residual stream
      common = os.path.commonprefix([re.split(r"[/_]", m) for m in producers])
      common = common[:-1] if common and common[-1] == "block" else common
      base = "residual" + (f":{'_'.join(common)}" if common else "")
    else:
      paths = [_module(p).split("/") for p, _ in spec.members(g)]
      prefix = []
      for parts in zip(*paths):
        if len(set(parts)) > 1:
          break
        prefix.append(parts[0])
      base = "/".join(prefix + ["units"])
    name, k = base, 1
    while name in rename.values():
      k += 1
      name = f"{base}#{k}"
    rename[g] = name

  def sub(ex):
    if ex is None or ex[0] == "fixed":
      return ex
    if ex[0] == "perm":
      return ("perm", rename[ex[1]])
    return (ex[0], tuple(sub(q) for q in ex[1]))

  named = PermutationSpec({rename[g]: n for g, n in spec.groups.items()},
                          {p: tuple(sub(e) for e in exprs) for p, exprs in spec.axes.items()})
  return named, rename


def _is_norm(module: str, spec: PermutationSpec, g: str) -> bool:
  """A module whose parameters are all vectors of the group (a norm's gain and bias)."""
  own = [exprs for p, exprs in spec.axes.items() if _module(p) == module]
  return all(len(exprs) == 1 for exprs in own)


def _module(path: str) -> str:
  """'params/block_0/mlp/up/kernel' -> 'block_0/mlp/up' (collection and leaf name dropped)."""
  parts = path.split("/")
  return "/".join(parts[1:-1] if len(parts) > 2 else parts[:-1])


def expr_size(ex: Expr, groups: Mapping[str, int]) -> int:
  if ex[0] == "fixed":
    return ex[1]
  if ex[0] == "perm":
    return groups[ex[1]]
  sizes = [expr_size(q, groups) for q in ex[1]]
  return int(np.prod(sizes)) if ex[0] == "product" else int(sum(sizes))


def axis_index(ex: Expr, size: int, perms: Mapping[str, Any], sizes: Mapping[str, int]):
  """The gather index of an axis of `size` entries whose Expr is `ex` under `perms`."""
  if ex is None or ex[0] == "fixed":
    return jnp.arange(size)
  if ex[0] == "perm":
    return jnp.asarray(perms[ex[1]]) if ex[1] in perms else jnp.arange(size)
  part_sizes = [expr_size(q, sizes) for q in ex[1]]
  parts = [axis_index(q, n, perms, sizes) for q, n in zip(ex[1], part_sizes)]
  if ex[0] == "concat":
    offsets = np.cumsum([0, *part_sizes[:-1]])
    return jnp.concatenate([p + o for p, o in zip(parts, offsets)])
  index = parts[0]
  for p, n in zip(parts[1:], part_sizes[1:]):
    index = (index[:, None] * n + p[None, :]).reshape(-1)
  return index


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Any], variables: Any) -> Any:
  """variables with every axis reordered by its Expr: new[..., i, ...] = old[..., index[i], ...].
  Applying the same perms to a whole variables tree leaves the network's function unchanged."""

  def one(path, x):
    exprs = spec.axes.get(path_str(path))
    if exprs is None:
      return x
    for k, ex in enumerate(exprs):
      if ex is not None and groups_in(ex) & set(perms):
        x = jnp.take(x, axis_index(ex, x.shape[k], perms, spec.groups), axis=k)
    return x

  return jax.tree_util.tree_map_with_path(one, variables)


def random_permutation(spec: PermutationSpec, rng: jax.Array) -> dict[str, jax.Array]:
  keys = jax.random.split(rng, max(len(spec.groups), 1))
  return {g: jax.random.permutation(k, n) for k, (g, n) in zip(keys, spec.groups.items())}


def identity_permutation(spec: PermutationSpec) -> dict[str, jax.Array]:
  return {g: jnp.arange(n) for g, n in spec.groups.items()}


def compose(first: Mapping[str, Any], then: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The permutation that applying `first` and then `then` gives (new[i] = old[first[then[i]]])."""
  return {g: jnp.asarray(first[g])[jnp.asarray(then[g])] for g in first}


def inverse(perms: Mapping[str, Any]) -> dict[str, jax.Array]:
  return {g: jnp.argsort(jnp.asarray(p)) for g, p in perms.items()}
