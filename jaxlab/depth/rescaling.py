"""Weight rescaling for variance control (Owen et al. 2025, "Variance Control via Weight
Rescaling in LLM Pre-training", arXiv:2503.17500).

Layer Index Rescaling (LIR), an init: the weights of block l (1-based, l = index + 1) are drawn
with std sigma / sqrt(l), so deeper blocks start smaller. `layer_index_stds` gives those stds
from a param-info tree; `lir_rescale` rescales any already-initialised params to them (no model
edits needed).

Target Variance Rescaling (TVR), during training: every K steps each watched weight whose std
has grown past ratio_threshold x its target std is rescaled to exactly its target,
W <- W * target / std(W). `target_variance_rescaling` does this as an optax transform placed
last in the chain; `tvr_targets` builds its tree of targets.

std(W) is the population std over all entries of the tensor (jnp.std, mean removed).
"""

import numbers
import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlab.param import roles as roles_lib
from jaxlab.param.base import SP, Parametrization
from jaxlab.param.meta import ParamInfo

BLOCK_PATTERN = r"block_(\d+)"  # module names of residual blocks (TransformerLM, ViT)


def _is_info(x: Any) -> bool:
  return isinstance(x, ParamInfo)


def _is_none(x: Any) -> bool:
  return x is None


def _key(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "idx", k)))


def block_index(path: Sequence[Any], pattern: str = BLOCK_PATTERN) -> int | None:
  """Index i of the first path entry that fully matches `pattern` (group 1), e.g. 3 for
  ('block_3', 'attn', 'qkv', 'kernel'); None when no entry matches. Entries may be jax tree
  path keys or strings."""
  for k in path:
    m = re.fullmatch(pattern, _key(k))
    if m:
      return int(m.group(1))
  return None


def _check_roles(roles: Sequence[str]) -> tuple[str, ...]:
  return tuple(roles_lib.check(r) for r in roles)


def layer_index_stds(info: Any, sigma: float, *, roles: Sequence[str] = (roles_lib.HIDDEN,),
                     pattern: str = BLOCK_PATTERN) -> Any:
  """LIR target init stds (Owen et al. 2025): sigma / sqrt(l), l = block index + 1,
  for every parameter of the given roles inside a module matching `pattern`; None elsewhere.

  `info` is a `param_info` tree. Raises ValueError when sigma <= 0 or nothing matches.
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}")
  roles = _check_roles(roles)

  def std(path, i: ParamInfo):
    idx = block_index(path, pattern)
    if idx is None or i.role not in roles:
      return None
    return float(sigma) / (idx + 1) ** 0.5

  stds = jax.tree_util.tree_map_with_path(std, info, is_leaf=_is_info)
  if not jax.tree.leaves(stds):
    raise ValueError(f"no parameter with role in {roles} inside a module matching "
                     f"{pattern!r}; LIR needs residual blocks named like 'block_0'")
  return stds


def _standardise(w: jax.Array, target: float) -> jax.Array:
  """w * target / std(w) (in f32, cast back); w itself when std(w) == 0 (e.g. zero init)."""
  w32 = w.astype(jnp.float32)
  s = jnp.std(w32)
  return jnp.where(s > 0, w32 * (target / jnp.where(s > 0, s, 1.0)), w32).astype(w.dtype)


def lir_rescale(params: Any, info: Any, sigma: float, *,
                roles: Sequence[str] = (roles_lib.HIDDEN,), pattern: str = BLOCK_PATTERN) -> Any:
  """Params with every LIR-watched weight (see `layer_index_stds`) rescaled to std exactly
  sigma / sqrt(l): W <- W * (sigma / sqrt(l)) / std(W). Works on the params of any model that
  names its blocks like 'block_<i>'; other parameters are returned unchanged."""
  stds = layer_index_stds(info, sigma, roles=roles, pattern=pattern)
  return jax.tree.map(lambda t, w: w if t is None else _standardise(w, t), stds, params,
                      is_leaf=_is_none)


def tvr_targets(info: Any, parametrization: Parametrization = SP(), *,
                depth_sigma: float | None = None, roles: Sequence[str] = (roles_lib.HIDDEN,),
                pattern: str = BLOCK_PATTERN) -> Any:
  """Tree of TVR target stds (None = not watched) for every parameter of the given roles
  (default: HIDDEN kernels).

  depth_sigma=None: target = the parameter's init std, parametrization.init_std(role, fans)
  (pass the resolved parametrization the model was built with); zero-init parameters are not
  watched. depth_sigma=sigma: target = sigma / sqrt(l) as in LIR (only parameters inside
  blocks matching `pattern` are watched).
  """
  if depth_sigma is not None:
    return layer_index_stds(info, depth_sigma, roles=roles, pattern=pattern)
  roles = _check_roles(roles)

  def target(i: ParamInfo):
    if i.role not in roles:
      return None
    std = float(parametrization.init_std(i.role, i.fan_in, i.fan_out))
    return std if std > 0 else None

  return jax.tree.map(target, info, is_leaf=_is_info)


class TVRState(NamedTuple):
  count: jax.Array  # int32: updates seen so far
  rescaled: jax.Array  # int32: tensors rescaled by the latest update (0 between rescale steps)


def target_variance_rescaling(targets: Any, every_k: int,
                              ratio_threshold: float = 1.2) -> optax.GradientTransformation:
  """TVR (Owen et al. 2025) as an optax transform; place it LAST in the chain.

  `targets`: a tree shaped like the params holding a target std (float > 0) per watched weight
  and None elsewhere (see `tvr_targets`). On update number t (1-based; the count is kept in
  the state) with t % every_k == 0, every watched weight whose post-update std exceeds
  ratio_threshold * target is re-standardised:

    W_new = params + updates                     (the optimizer's step, incl. weight decay)
    W_out = W_new * target / std(W_new)          if std(W_new) > ratio_threshold * target

  and the emitted update is W_out - params, so `optax.apply_updates` gives W_out (its std is the
  target up to float rounding). Other weights, and every weight on other steps, get the
  incoming update unchanged. The rescale thus acts on the post-update weights, which is why
  the transform must come last (a later transform would change W_new) and needs `params`.

  Optimizer state: the inner optimizer's state (e.g. Adam's m and v) is not rescaled, as in
  the paper: its moments stay exactly those of the optimizer run on the same gradients (Adam's
  step size stays ~lr, so a rescaled weight's relative update grows by std / target).

  jit-compatible: the decision uses jnp.where on the traced count and stds (the stds of watched
  weights are computed on every step).
  """
  if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
    raise ValueError(f"every_k must be an int >= 1, got {every_k!r}")
  if not ratio_threshold > 0:
    raise ValueError(f"ratio_threshold must be > 0, got {ratio_threshold!r}")

  def check(path, t):
    if t is not None and not (isinstance(t, numbers.Real) and not isinstance(t, bool) and t > 0):
      raise ValueError(f"TVR target at {jax.tree_util.keystr(path)} must be a float > 0 or "
                       f"None (not watched), got {t!r}")
  jax.tree_util.tree_map_with_path(check, targets, is_leaf=_is_none)

  def init(params):
    try:
      jax.tree.map(lambda t, p: None, targets, params, is_leaf=_is_none)
    except ValueError as e:
      raise ValueError(f"TVR targets do not match the params' structure: {e}") from None
    return TVRState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("target_variance_rescaling needs params: tx.update(grads, state, params)")
    count = optax.safe_int32_increment(state.count)
    due = count % every_k == 0
    fired = []

    def one(t, u, p):
      if t is None:
        return u
      new = p.astype(jnp.float32) + u.astype(jnp.float32)
      std = jnp.std(new)
      fire = due & (std > t * ratio_threshold)
      fired.append(fire)
      scale = t / jnp.where(fire, std, t)
      rescaled = (new * scale - p.astype(jnp.float32)).astype(u.dtype)
      return jnp.where(fire, rescaled, u)

    updates = jax.tree.map(one, targets, updates, params, is_leaf=_is_none)
    n = sum((f.astype(jnp.int32) for f in fired), jnp.zeros([], jnp.int32))
    return updates, TVRState(count, n)

  return optax.GradientTransformation(init, update)
