"""Permutation symmetries of a network, derived from its traced computation.

Hidden units can be reordered without changing what a network computes (Hecht-Nielsen 1990;
Entezari et al. 2022; Ainsworth et al. 2023, "Git Re-Basin"): a permutation of the hidden units of
a layer applied to that layer's output axis and to every axis that reads those units. Which
parameter axes must move together is a property of the computation, so it is derived here from
the jaxpr of `apply_fn(variables, *inputs)`, not written by hand per architecture:

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
from jax.extend import core as jcore

Expr = Any  # None | ("perm", group) | ("fixed", size) | ("product", (Expr, ...)) | ("concat", ...)

_UNARY = {
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc", "erf_inv",
    "abs", "sign", "floor", "ceil", "round", "sqrt", "rsqrt", "cbrt", "square", "integer_pow",
    "sin", "cos", "tan", "convert_element_type", "stop_gradient", "copy", "copy_p", "not",
    "is_finite", "reduce_precision", "real", "imag", "conj", "optimization_barrier",
}
_NARY = {
    "add", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "and", "or", "xor", "eq",
    "ne", "lt", "le", "gt", "ge", "select_n", "clamp", "nextafter", "add_any",
}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"}
_ARG_REDUCE = {"argmax", "argmin"}


class _Axes:
  """Union-find over (var, axis) nodes, plus fixed marks and product / concat definitions."""

  def __init__(self):
    self.parent: dict = {}
    self.size: dict = {}
    self.fixed: set = set()
    self.defs: dict = {}  # node -> [("product" | "concat", [nodes])]

  def node(self, var, axis, scope=0):
    key = (scope, var, axis)
    if key not in self.parent:
      self.parent[key] = key
      self.size[key] = int(var.aval.shape[axis])
    return key

  def find(self, k):
    while self.parent[k] != k:
      self.parent[k] = self.parent[self.parent[k]]
      k = self.parent[k]
    return k

  def union(self, a, b):
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self.parent[rb] = ra

  def fix(self, k):
    self.fixed.add(k)


def _shape(v):
  return tuple(getattr(v.aval, "shape", ()))


def _is_var(v) -> bool:
  return isinstance(v, jcore.Var)


class _Tracer:
  """Walks a jaxpr (and the jaxprs inside it), filling an _Axes."""

  def __init__(self, axes: _Axes, platform: str):
    self.ax = axes
    self.platform = platform
    self.scope = 0  # a jaxpr called twice (a shared jit) gets fresh nodes per call
    self.scopes = 0

  # -- helpers --------------------------------------------------------------------------------
  def n(self, v, i, scope=None):
    return self.ax.node(v, i, self.scope if scope is None else scope)

  def tie(self, a, i, b, j):
    """Joins axis i of a and axis j of b (both vars, sizes > 1 and equal)."""
    if not (_is_var(a) and _is_var(b)):
      if _is_var(a) and _shape(a)[i] > 1:
        self.ax.fix(self.n(a, i))  # a literal or constant of size > 1 along it
      if _is_var(b) and _shape(b)[j] > 1:
        self.ax.fix(self.n(b, j))
      return
    sa, sb = _shape(a)[i], _shape(b)[j]
    if sa == 1 or sb == 1:
      return
    if sa != sb:
      self.fix_all(a)
      self.fix_all(b)
      return
    self.ax.union(self.n(a, i), self.n(b, j))

  def fix_all(self, v):
    if _is_var(v):
      for i, s in enumerate(_shape(v)):
        if s > 1:
          self.ax.fix(self.n(v, i))

  def define(self, v, i, kind, parts):
    """Axis i of v is the product / concatenation of the (var, axis) `parts`."""
    node = self.n(v, i)
    self.ax.defs.setdefault(node, []).append((kind, [self.n(p, a) for p, a in parts]))

  # -- the walk -------------------------------------------------------------------------------
  def jaxpr(self, jaxpr, consts=()):
    for v, c in zip(jaxpr.constvars, consts):
      if np.size(c) > 1:
        self.fix_all(v)  # a captured constant array: its entries are in a fixed order
    for eqn in jaxpr.eqns:
      self.eqn(eqn)

  def call(self, closed, outer_in, outer_out):
    """A sub-jaxpr whose invars / outvars are the outer ones, axis for axis."""
    inner = closed.jaxpr if hasattr(closed, "jaxpr") else closed
    consts = closed.consts if hasattr(closed, "consts") else ()
    outer_scope = self.scope
    self.scopes += 1
    inner_scope = self.scopes
    for o, i in zip(outer_in, inner.invars):
      self.link(o, outer_scope, i, inner_scope)
    self.scope = inner_scope
    self.jaxpr(inner, consts)
    self.scope = outer_scope
    for i, o in zip(inner.outvars, outer_out):
      self.link(i, inner_scope, o, outer_scope)

  def link(self, a, scope_a, b, scope_b):
    """Joins a (in scope_a) and b (in scope_b) axis for axis: a call boundary."""
    if not (_is_var(a) and _is_var(b)):
      for v, sc, other in ((a, scope_a, b), (b, scope_b, a)):
        if _is_var(v) and np.size(getattr(other, "val", 0)) > 1:
          for k, s in enumerate(_shape(v)):
            if s > 1:
              self.ax.fix(self.n(v, k, sc))
      return
    for k, s in enumerate(_shape(a)):
      if s > 1:
        self.ax.union(self.n(a, k, scope_a), self.n(b, k, scope_b))

  def same_shape(self, a, b):
    if not (_is_var(a) and _is_var(b)):
      if _is_var(b) and np.size(getattr(a, "val", 0)) > 1:
        self.fix_all(b)
      if _is_var(a) and np.size(getattr(b, "val", 0)) > 1:
        self.fix_all(a)
      return
    for k in range(len(_shape(a))):
      self.tie(a, k, b, k)

  def eqn(self, e):
    name, ins, outs, p = e.primitive.name, e.invars, e.outvars, e.params
    if name in _UNARY:
      self.same_shape(ins[0], outs[0])
    elif name in _NARY:
      for x in ins:  # same rank (size-1 axes broadcast) or a scalar
        if len(_shape(x)) == len(_shape(outs[0])):
          self.same_shape(x, outs[0])
        elif _shape(x):
          self.fix_all(x)
          self.fix_all(outs[0])
    elif name == "broadcast_in_dim":
      for j, d in enumerate(p["broadcast_dimensions"]):
        self.tie(ins[0], j, outs[0], d)
    elif name == "transpose":
      for i, j in enumerate(p["permutation"]):
        self.tie(outs[0], i, ins[0], j)
    elif name in _REDUCE or name in _ARG_REDUCE:
      kept = [k for k in range(len(_shape(ins[0]))) if k not in p["axes"]]
      for i, k in enumerate(kept):
        self.tie(ins[0], k, outs[0], i)
      if name in _ARG_REDUCE:  # the index it returns depends on the order
        for k in p["axes"]:
          if _shape(ins[0])[k] > 1:
            self.ax.fix(self.n(ins[0], k))
    elif name == "squeeze":
      kept = [k for k in range(len(_shape(ins[0]))) if k not in p["dimensions"]]
      for i, k in enumerate(kept):
        self.tie(ins[0], k, outs[0], i)
    elif name == "expand_dims":
      self.reshape(ins[0], outs[0])
    elif name == "reshape":
      self.reshape(ins[0], outs[0])
    elif name == "dot_general":
      self.dot_general(e)
    elif name == "conv_general_dilated":
      self.conv(e)
    elif name == "split":
      axis = p["axis"]
      x = ins[0]
      for k in range(len(_shape(x))):
        if k != axis:
          for o in outs:
            self.tie(x, k, o, k)
      self.define(x, axis, "concat", [(o, axis) for o in outs])
    elif name == "concatenate":
      axis = p["dimension"]
      y = outs[0]
      for k in range(len(_shape(y))):
        if k != axis:
          for x in ins:
            self.tie(x, k, y, k)
      if all(_is_var(x) for x in ins):
        self.define(y, axis, "concat", [(x, axis) for x in ins])
      else:
        self.fix_all(y)
    elif name == "pad":
      x, y = ins[0], outs[0]
      for k, (lo, hi, interior) in enumerate(p["padding_config"]):
        if (lo, hi, interior) == (0, 0, 0):
          self.tie(x, k, y, k)
        else:
          self.ax.fix(self.n(x, k)) if _shape(x)[k] > 1 else None
          self.ax.fix(self.n(y, k)) if _shape(y)[k] > 1 else None
    elif name == "slice":
      x, y = ins[0], outs[0]
      strides = p["strides"] or (1,) * len(_shape(x))
      for k in range(len(_shape(x))):
        if _shape(x)[k] == _shape(y)[k] and strides[k] == 1:
          self.tie(x, k, y, k)
        else:  # a part of the axis is taken: its order matters
          for v in (x, y):
            if _shape(v)[k] > 1:
              self.ax.fix(self.n(v, k))
    elif name == "gather":
      self.gather(e)
    elif name in ("jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"):
      self.call(p.get("jaxpr") or p.get("call_jaxpr"), ins, outs)
    elif name in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"):
      self.call(p.get("call_jaxpr") or p.get("fun_jaxpr"), ins, outs)
    elif name == "cond" and p.get("branches_platforms"):
      self.call(self.platform_branch(p), ins[1:], outs)
    elif name == "platform_index":
      pass  # a scalar branch index
    else:  # not understood: nothing it touches may be permuted
      for v in (*ins, *outs):
        self.fix_all(v)

  def platform_branch(self, p):
    default = None
    for branch, platforms in zip(p["branches"], p["branches_platforms"]):
      if platforms is None:
        default = branch
      elif self.platform in platforms:
        return branch
    return default if default is not None else p["branches"][0]

  def reshape(self, x, y):
    sx, sy = _shape(x), _shape(y)
    ix = [k for k, s in enumerate(sx) if s > 1]
    iy = [k for k, s in enumerate(sy) if s > 1]
    a = b = 0
    while a < len(ix) and b < len(iy):
      ga, gb = [ix[a]], [iy[b]]
      pa, pb = sx[ix[a]], sy[iy[b]]
      a, b = a + 1, b + 1
      while pa != pb:
        if pa < pb:
          pa *= sx[ix[a]]
          ga.append(ix[a])
          a += 1
        else:
          pb *= sy[iy[b]]
          gb.append(iy[b])
          b += 1
      if len(ga) == 1 and len(gb) == 1:
        self.tie(x, ga[0], y, gb[0])
      elif len(ga) == 1:
        self.define(x, ga[0], "product", [(y, k) for k in gb])
      elif len(gb) == 1:
        self.define(y, gb[0], "product", [(x, k) for k in ga])
      else:
        for k in ga:
          self.ax.fix(self.n(x, k))
        for k in gb:
          self.ax.fix(self.n(y, k))

  def dot_general(self, e):
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    lhs, rhs, out = e.invars[0], e.invars[1], e.outvars[0]
    for i, j in zip(lc, rc):
      self.tie(lhs, i, rhs, j)
    k = 0
    for i, j in zip(lb, rb):
      self.tie(lhs, i, out, k)
      self.tie(rhs, j, out, k)
      k += 1
    for i in range(len(_shape(lhs))):
      if i not in lc and i not in lb:
        self.tie(lhs, i, out, k)
        k += 1
    for j in range(len(_shape(rhs))):
      if j not in rc and j not in rb:
        self.tie(rhs, j, out, k)
        k += 1

  def conv(self, e):
    lhs, rhs, out = e.invars[0], e.invars[1], e.outvars[0]
    dn = e.params["dimension_numbers"]
    groups = e.params["feature_group_count"]
    if e.params["batch_group_count"] != 1:
      for v in (lhs, rhs, out):
        self.fix_all(v)
      return
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    self.tie(lhs, ls[0], out, os_[0])  # batch
    if groups == 1:
      self.tie(lhs, ls[1], rhs, rs[1])
      self.tie(rhs, rs[0], out, os_[1])
    elif _shape(rhs)[rs[1]] == 1 and groups == _shape(lhs)[ls[1]]:  # depthwise
      self.tie(lhs, ls[1], rhs, rs[0])
      self.tie(rhs, rs[0], out, os_[1])
    else:
      for v, k in ((lhs, ls[1]), (rhs, rs[0]), (rhs, rs[1]), (out, os_[1])):
        if _shape(v)[k] > 1:
          self.ax.fix(self.n(v, k))
    for v, spec in ((lhs, ls), (rhs, rs), (out, os_)):  # spatial axes: not units
      for k in spec[2:]:
        if _shape(v)[k] > 1:
          self.ax.fix(self.n(v, k))

  def gather(self, e):
    """Embedding lookups: the table's indexed axis is fixed; its full-size sliced axes pass to
    the output's offset dims."""
    operand, out = e.invars[0], e.outvars[0]
    dn, sizes = e.params["dimension_numbers"], e.params["slice_sizes"]
    offset_operand = [k for k in range(len(_shape(operand)))
                      if k not in dn.collapsed_slice_dims and k not in getattr(
                          dn, "operand_batching_dims", ())]
    for k in range(len(_shape(operand))):
      if k in offset_operand and sizes[k] == _shape(operand)[k]:
        continue
      if _shape(operand)[k] > 1:
        self.ax.fix(self.n(operand, k))
    for k, d in zip(offset_operand, dn.offset_dims):
      if sizes[k] == _shape(operand)[k]:
        self.tie(operand, k, out, d)
      elif _shape(out)[d] > 1:
        self.ax.fix(self.n(out, d))
    self.fix_all(e.invars[1])
    for d in range(len(_shape(out))):
      if d not in dn.offset_dims and _shape(out)[d] > 1:
        self.ax.fix(self.n(out, d))


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
            if group in _groups_in(ex)]


def _groups_in(ex: Expr) -> set:
  if ex is None or ex[0] == "fixed":
    return set()
  if ex[0] == "perm":
    return {ex[1]}
  return set().union(*(_groups_in(part) for part in ex[1]))


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
  axes = _Axes()
  tracer = _Tracer(axes, platform or jax.default_backend())
  param_vars, input_vars = jaxpr.invars[:len(leaves)], jaxpr.invars[len(leaves):]
  tracer.jaxpr(jaxpr, closed.consts)
  for v in (*input_vars, *jaxpr.outvars):
    tracer.fix_all(v)
  spec, names = _resolve(axes, [(path_str(p), v) for (p, _), v in zip(leaves, param_vars)])
  spec, rename = _named(spec)
  acts = []
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      if not _is_var(v) or not hasattr(v.aval, "shape"):
        continue
      for k, size in enumerate(_shape(v)):
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


def _resolve(ax: _Axes, params: list) -> tuple[PermutationSpec, dict]:
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
    for k, s in enumerate(_shape(var)):
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
      if ex is not None and _groups_in(ex) & set(perms):
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
