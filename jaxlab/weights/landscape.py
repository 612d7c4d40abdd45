"""Loss-landscape slices (Li et al. 2018, "Visualizing the loss landscape of neural nets").

`filter_normalized_direction` draws the paper's random direction (Sec. 4): d ~ N(0, I) with the
structure of the params, each filter rescaled, d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||,
where a filter is a weight's slice along its last (output) axis (a conv's HWIO filter, a dense
unit's incoming weights). `slice_1d` / `slice_2d` evaluate f(alpha, beta) = L(theta + alpha d1 +
beta d2) on a grid (the paper's eq. in Sec. 3) and `interpolation_slice` L((1 - l) A + l B)
(Goodfellow et al. 2015's linear path, Sec. 3). Grid points are evaluated `chunk_size` at a time
(jax.lax.map over vmapped chunks), so memory grows with the chunk, not with the grid.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxlab.param.meta import ParamInfo
from jaxlab.param.roles import BIAS, NORM

LossFn = Callable[[Any], jax.Array]


def _is_info(x: Any) -> bool:
  return isinstance(x, ParamInfo)


def _filter_norms(x: jax.Array) -> jax.Array:
  """||x[..., o]|| per filter o, kept broadcastable against x; a vector (or scalar) is one
  filter."""
  axes = tuple(range(x.ndim - 1)) if x.ndim >= 2 else tuple(range(x.ndim))
  return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def filter_normalized_direction(rng: jax.Array, params: Any, info: Any,
                                ignore_bias_and_norm: bool = True) -> Any:
  """A Gaussian direction, each filter rescaled to the norm of the matching filter of params
  (Li et al. 2018, Sec. 4). Biases, norm gains and other params of < 2 axes get direction 0 when
  `ignore_bias_and_norm` (as in the paper's plots), else are normalised as one filter each
  (||d|| = ||p||; the authors' code copies p instead). A zero filter (a pruned unit) gets 0."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  infos = jax.tree_util.tree_leaves(info, is_leaf=_is_info)
  if len(infos) != len(leaves):
    raise ValueError(f"info has {len(infos)} ParamInfo leaves for {len(leaves)} params")
  out = []
  for key, p, inf in zip(jax.random.split(rng, len(leaves)), leaves, infos):
    p32 = jnp.asarray(p, jnp.float32)
    if inf.role in (BIAS, NORM) or p32.ndim < 2:
      if ignore_bias_and_norm:
        out.append(jnp.zeros_like(p))
        continue
    d = jax.random.normal(key, p32.shape, jnp.float32)
    dn = _filter_norms(d)
    d = d * (_filter_norms(p32) / jnp.where(dn > 0, dn, 1.0))
    out.append(d.astype(jnp.result_type(p)))
  return jax.tree_util.tree_unflatten(treedef, out)


def _grid_losses(loss_fn: LossFn, point: Callable[[jax.Array], Any], coords: jax.Array,
                 chunk_size: int) -> jax.Array:
  """loss_fn(point(c)) for each row c of coords [N, k], chunk_size rows vmapped at a time."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
  run = jax.jit(lambda c: jax.lax.map(lambda ci: loss_fn(point(ci)), c,
                                      batch_size=min(chunk_size, c.shape[0])))
  return run(coords)


def _axpy(p: jax.Array, *terms: tuple[jax.Array, jax.Array]) -> jax.Array:
  """p + sum(a * d) in p's dtype."""
  x = p
  for a, d in terms:
    x = x + a.astype(jnp.result_type(p)) * d
  return x.astype(jnp.result_type(p))


def slice_1d(loss_fn: LossFn, params: Any, direction: Any, alphas: Any,
             chunk_size: int = 8) -> jax.Array:
  """[len(alphas)] losses L(params + alpha * direction); loss_fn(params) -> scalar, jittable."""
  alphas = jnp.asarray(alphas, jnp.float32).reshape(-1, 1)
  point = lambda c: jax.tree.map(lambda p, d: _axpy(p, (c[0], d)), params, direction)  # noqa: E731
  return _grid_losses(loss_fn, point, alphas, chunk_size)


def slice_2d(loss_fn: LossFn, params: Any, d1: Any, d2: Any, alphas: Any, betas: Any,
             chunk_size: int = 8) -> jax.Array:
  """[len(alphas), len(betas)] losses L(params + alpha d1 + beta d2) (row i: alphas[i])."""
  a, b = jnp.meshgrid(jnp.asarray(alphas, jnp.float32), jnp.asarray(betas, jnp.float32),
                      indexing="ij")
  coords = jnp.stack([a.ravel(), b.ravel()], axis=1)
  point = lambda c: jax.tree.map(  # noqa: E731
      lambda p, x, y: _axpy(p, (c[0], x), (c[1], y)), params, d1, d2)
  return _grid_losses(loss_fn, point, coords, chunk_size).reshape(a.shape)


def interpolation_slice(loss_fn: LossFn, params_a: Any, params_b: Any, lambdas: Any,
                        chunk_size: int = 8) -> jax.Array:
  """[len(lambdas)] losses L((1 - l) A + l B); l may leave [0, 1] (extrapolation). The endpoints
  are A and B exactly."""
  lambdas = jnp.asarray(lambdas, jnp.float32).reshape(-1, 1)

  def point(c):
    def mix(a, b):
      t = c[0].astype(jnp.result_type(a))
      return ((1 - t) * a + t * b).astype(jnp.result_type(a))
    return jax.tree.map(mix, params_a, params_b)

  return _grid_losses(loss_fn, point, lambdas, chunk_size)
