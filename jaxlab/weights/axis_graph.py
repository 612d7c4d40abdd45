"""The axis graph of a traced program: which axes of which arrays must be permuted together.

Every (array, axis) of a jaxpr is a node of a union-find; each equation joins the nodes it ties
(an elementwise op its operands' axes, a dot_general its contracted and batch axes, a conv its
channel axes, ...), records axes that are products (reshape) or concatenations (split,
concatenate) of others, and fixes the axes whose order matters (slices, pads, gathers, spatial
conv axes, argmax, constants, any primitive not understood). jaxlab.weights.permutation turns
the result into permutation groups.
"""

import numpy as np
from jax.extend import core as jcore

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


class Axes:
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


def shape_of(v):
  return tuple(getattr(v.aval, "shape", ()))


def is_var(v) -> bool:
  return isinstance(v, jcore.Var)


class Tracer:
  """Walks a jaxpr (and the jaxprs inside it), filling an Axes."""

  def __init__(self, axes: Axes, platform: str):
    self.ax = axes
    self.platform = platform
    self.scope = 0  # a jaxpr called twice (a shared jit) gets fresh nodes per call
    self.scopes = 0

  # -- helpers --------------------------------------------------------------------------------
  def n(self, v, i, scope=None):
    return self.ax.node(v, i, self.scope if scope is None else scope)

  def tie(self, a, i, b, j):
    """Joins axis i of a and axis j of b (both vars, sizes > 1 and equal)."""
    if not (is_var(a) and is_var(b)):
      if is_var(a) and shape_of(a)[i] > 1:
        self.ax.fix(self.n(a, i))  # a literal or constant of size > 1 along it
      if is_var(b) and shape_of(b)[j] > 1:
        self.ax.fix(self.n(b, j))
      return
    sa, sb = shape_of(a)[i], shape_of(b)[j]
    if sa == 1 or sb == 1:
      return
    if sa != sb:
      self.fix_all(a)
      self.fix_all(b)
      return
    self.ax.union(self.n(a, i), self.n(b, j))

  def fix_all(self, v):
    if is_var(v):
      for i, s in enumerate(shape_of(v)):
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
    if not (is_var(a) and is_var(b)):
      for v, sc, other in ((a, scope_a, b), (b, scope_b, a)):
        if is_var(v) and np.size(getattr(other, "val", 0)) > 1:
          for k, s in enumerate(shape_of(v)):
            if s > 1:
              self.ax.fix(self.n(v, k, sc))
      return
    for k, s in enumerate(shape_of(a)):
      if s > 1:
        self.ax.union(self.n(a, k, scope_a), self.n(b, k, scope_b))

  def sameshape_of(self, a, b):
    if not (is_var(a) and is_var(b)):
      if is_var(b) and np.size(getattr(a, "val", 0)) > 1:
        self.fix_all(b)
      if is_var(a) and np.size(getattr(b, "val", 0)) > 1:
        self.fix_all(a)
      return
    for k in range(len(shape_of(a))):
      self.tie(a, k, b, k)

  def eqn(self, e):
    name, ins, outs, p = e.primitive.name, e.invars, e.outvars, e.params
    if name in _UNARY:
      self.sameshape_of(ins[0], outs[0])
    elif name in _NARY:
      for x in ins:  # same rank (size-1 axes broadcast) or a scalar
        if len(shape_of(x)) == len(shape_of(outs[0])):
          self.sameshape_of(x, outs[0])
        elif shape_of(x):
          self.fix_all(x)
          self.fix_all(outs[0])
    elif name == "broadcast_in_dim":
      for j, d in enumerate(p["broadcast_dimensions"]):
        self.tie(ins[0], j, outs[0], d)
    elif name == "transpose":
      for i, j in enumerate(p["permutation"]):
        self.tie(outs[0], i, ins[0], j)
    elif name in _REDUCE or name in _ARG_REDUCE:
      kept = [k for k in range(len(shape_of(ins[0]))) if k not in p["axes"]]
      for i, k in enumerate(kept):
        self.tie(ins[0], k, outs[0], i)
      if name in _ARG_REDUCE:  # the index it returns depends on the order
        for k in p["axes"]:
          if shape_of(ins[0])[k] > 1:
            self.ax.fix(self.n(ins[0], k))
    elif name == "squeeze":
      kept = [k for k in range(len(shape_of(ins[0]))) if k not in p["dimensions"]]
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
    elif name == "split":  # the input axis is the concatenation of the outputs'
      self.concat_axis(ins[0], outs, p["axis"])
    elif name == "concatenate":
      if all(is_var(x) for x in ins):
        self.concat_axis(outs[0], ins, p["dimension"])
      else:
        self.fix_all(outs[0])
    elif name == "pad":
      x, y = ins[0], outs[0]
      for k, (lo, hi, interior) in enumerate(p["padding_config"]):
        if (lo, hi, interior) == (0, 0, 0):
          self.tie(x, k, y, k)
        else:
          self.ax.fix(self.n(x, k)) if shape_of(x)[k] > 1 else None
          self.ax.fix(self.n(y, k)) if shape_of(y)[k] > 1 else None
    elif name == "slice":
      x, y = ins[0], outs[0]
      strides = p["strides"] or (1,) * len(shape_of(x))
      for k in range(len(shape_of(x))):
        if shape_of(x)[k] == shape_of(y)[k] and strides[k] == 1:
          self.tie(x, k, y, k)
        else:  # a part of the axis is taken: its order matters
          for v in (x, y):
            if shape_of(v)[k] > 1:
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

  def concat_axis(self, whole, parts, axis):
    """`whole` is `parts` concatenated along `axis`: the other axes are shared."""
    for k in range(len(shape_of(whole))):
      if k != axis:
        for part in parts:
          self.tie(whole, k, part, k)
    self.define(whole, axis, "concat", [(part, axis) for part in parts])

  def platform_branch(self, p):
    default = None
    for branch, platforms in zip(p["branches"], p["branches_platforms"]):
      if platforms is None:
        default = branch
      elif self.platform in platforms:
        return branch
    return default if default is not None else p["branches"][0]

  def reshape(self, x, y):
    sx, sy = shape_of(x), shape_of(y)
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
    for i in range(len(shape_of(lhs))):
      if i not in lc and i not in lb:
        self.tie(lhs, i, out, k)
        k += 1
    for j in range(len(shape_of(rhs))):
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
    elif shape_of(rhs)[rs[1]] == 1 and groups == shape_of(lhs)[ls[1]]:  # depthwise
      self.tie(lhs, ls[1], rhs, rs[0])
      self.tie(rhs, rs[0], out, os_[1])
    else:
      for v, k in ((lhs, ls[1]), (rhs, rs[0]), (rhs, rs[1]), (out, os_[1])):
        if shape_of(v)[k] > 1:
          self.ax.fix(self.n(v, k))
    for v, spec in ((lhs, ls), (rhs, rs), (out, os_)):  # spatial axes: not units
      for k in spec[2:]:
        if shape_of(v)[k] > 1:
          self.ax.fix(self.n(v, k))

  def gather(self, e):
    """Embedding lookups: the table's indexed axis is fixed; its full-size sliced axes pass to
    the output's offset dims."""
    operand, out = e.invars[0], e.outvars[0]
    dn, sizes = e.params["dimension_numbers"], e.params["slice_sizes"]
    offset_operand = [k for k in range(len(shape_of(operand)))
                      if k not in dn.collapsed_slice_dims and k not in getattr(
                          dn, "operand_batching_dims", ())]
    for k in range(len(shape_of(operand))):
      if k in offset_operand and sizes[k] == shape_of(operand)[k]:
        continue
      if shape_of(operand)[k] > 1:
        self.ax.fix(self.n(operand, k))
    for k, d in zip(offset_operand, dn.offset_dims):
      if sizes[k] == shape_of(operand)[k]:
        self.tie(operand, k, out, d)
      elif shape_of(out)[d] > 1:
        self.ax.fix(self.n(out, d))
    self.fix_all(e.invars[1])
    for d in range(len(shape_of(out))):
      if d not in dn.offset_dims and shape_of(out)[d] > 1:
        self.ax.fix(self.n(out, d))
