"""Weight reparametrisations that control weight scale: hyperspherical projection and weight
normalization.

Hyperspherical projection (Lee et al. 2025, SimbaV2, "Hyperspherical Normalization for
Scalable Deep Reinforcement Learning"): each watched weight is kept on the unit sphere
by projecting it back after every optimizer update. The unit vectors are the incoming weight
vectors of the output units, i.e. the COLUMNS of a [fan_in, fan_out] Dense kernel (all axes
but the last: for an HWIO conv kernel, each output channel's (kh, kw, c_in) filter), so every
pre-activation is a dot product with a unit vector. `hyperspherical_init` projects the initial
params, `hyperspherical_projection` is the optax transform (placed last in the chain).

Weight normalization (Salimans & Kingma 2016, eq. 2): w = g * v / ||v|| per output unit, as a
pure function `weight_norm(v, g, axis)` whose VJP is the paper's eq. 3.
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlab.param import roles as roles_lib
from jaxlab.param.meta import ParamInfo


def _is_leaf(x: Any) -> bool:
  return x is None or isinstance(x, tuple)


def _axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  out = tuple(sorted({a % ndim if -ndim <= a < ndim else a for a in axes}))
  if not out or any(not 0 <= a < ndim for a in out):
    raise ValueError(f"axis {axis!r} invalid for a {ndim}-d weight; valid axes: 0..{ndim - 1}")
  return out


def fan_in_axes(ndim: int) -> tuple[int, ...]:
  """All axes but the last: the axes an output unit's incoming weight vector spans."""
  if ndim < 2:
    raise ValueError(f"hyperspherical projection needs a weight with >= 2 axes, got {ndim}")
  return tuple(range(ndim - 1))


def sphere_axes(info: Any, roles: Sequence[str] = (roles_lib.HIDDEN,)) -> Any:
  """Tree of normalisation axes (a tuple: all axes but the last) for every weight of the given
  roles (default HIDDEN kernels), None for parameters that are not projected."""
  roles = tuple(roles_lib.check(r) for r in roles)
  return jax.tree.map(lambda i: fan_in_axes(len(i.names)) if i.role in roles else None, info,
                      is_leaf=lambda x: isinstance(x, ParamInfo))


def project_to_sphere(w: jax.Array, axes: int | Sequence[int] = 0,
                      eps: float = 1e-12) -> jax.Array:
  """w / ||w|| with the L2 norm over `axes` (each slice along the other axes has norm 1)."""
  axes = _axes(axes, w.ndim)
  w32 = w.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(w32), axis=axes, keepdims=True))
  return (w32 / jnp.maximum(norm, eps)).astype(w.dtype)


def hyperspherical_init(params: Any, axes: Any) -> Any:
  """Params with every watched weight (`axes` tree from `sphere_axes`) on the unit sphere."""
  return jax.tree.map(lambda a, w: w if a is None else project_to_sphere(w, a), axes, params,
                      is_leaf=_is_leaf)


def hyperspherical_projection(axes: Any, eps: float = 1e-12) -> optax.GradientTransformation:
  """SimbaV2's post-update projection as a stateless optax transform; place it LAST in the
  chain. For each watched weight the emitted update is normalize(params + updates) - params,
  so `optax.apply_updates` leaves it on the unit sphere (up to float rounding); other
  parameters pass through. `axes`: tree of normalisation axes or None (see `sphere_axes`)."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("hyperspherical_projection needs params: tx.update(grads, state, params)")

    def one(a, u, p):
      if a is None:
        return u
      new = p.astype(jnp.float32) + u.astype(jnp.float32)
      return (project_to_sphere(new, a, eps) - p.astype(jnp.float32)).astype(u.dtype)

    return jax.tree.map(one, axes, updates, params, is_leaf=_is_leaf), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# --- weight normalization ------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _weight_norm(v: jax.Array, g: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
  return jnp.expand_dims(g, axes) * v / norm


def _weight_norm_fwd(v, g, axes):
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
  return jnp.expand_dims(g, axes) * v / norm, (v, g, norm)


def _weight_norm_bwd(axes, res, dw):
  v, g, norm = res
  unit = v / norm
  dg = jnp.sum(dw * unit, axis=axes)  # eq. 3: grad_g = grad_w . v / ||v||
  # eq. 3: grad_v = g / ||v|| * M_w grad_w, M_w = I - w w^T / ||w||^2 (projection away from v)
  dv = jnp.expand_dims(g, axes) / norm * (dw - jnp.expand_dims(dg, axes) * unit)
  return dv, dg


_weight_norm.defvjp(_weight_norm_fwd, _weight_norm_bwd)


def weight_norm(v: jax.Array, g: jax.Array, axis: int | Sequence[int] = 0) -> jax.Array:
  """Weight normalization (Salimans & Kingma 2016, eq. 2): w = g * v / ||v||, the norm over
  `axis` (the fan-in axes; default 0 for a [fan_in, fan_out] kernel), g with v's shape minus
  those axes (one gain per output unit).

  The VJP is eq. 3: grad_g = grad_w . v/||v||, grad_v = g/||v|| * (I - w w^T/||w||^2) grad_w,
  so grad_v is orthogonal to v (per output unit) and an SGD step v' = v - lr grad_v gives
  ||v'||^2 = ||v||^2 + lr^2 ||grad_v||^2: ||v|| never shrinks. v needs nonzero norm per unit.
  """
  axes = _axes(axis, v.ndim)
  expected = tuple(d for a, d in enumerate(v.shape) if a not in axes)
  if tuple(g.shape) != expected:
    raise ValueError(f"weight_norm: g has shape {tuple(g.shape)}, expected {expected} (v's "
                     f"shape {tuple(v.shape)} without axes {axes})")
  return _weight_norm(v, g, axes)


def weight_norm_decompose(w: jax.Array, axis: int | Sequence[int] = 0
                          ) -> tuple[jax.Array, jax.Array]:
  """(v, g) = (w, ||w|| over `axis`), so weight_norm(v, g, axis) == w."""
  axes = _axes(axis, w.ndim)
  return w, jnp.sqrt(jnp.sum(jnp.square(w), axis=axes))
