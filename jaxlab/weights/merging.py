"""Model merging as pure functions on param pytrees (nested dicts of arrays, as Flax `params`).

- `uniform_soup`, `greedy_soup`: Wortsman et al. 2022, "Model soups: averaging weights of
  multiple fine-tuned models improves accuracy without increasing inference time" (uniform
  soup; greedy soup, Recipe 1).
- `task_vectors`, `task_arithmetic`: Ilharco et al. 2023, "Editing models with task
  arithmetic": tau_i = theta_i - theta_base, theta = theta_base + lambda * sum_i tau_i.
- `magnitude_trim`, `ties_merge`: Yadav et al. 2023, "TIES-Merging: resolving interference when
  merging models" (trim, elect sign, disjoint merge; Algorithm 1).
- `dare`, `dare_merge`: Yu et al. 2024, "Language models are Super Mario: absorbing abilities
  from homologous models as a free lunch" (DARE: drop and rescale).
- `layer_indices`, `layer_depths`, `lines_scale`: Wang et al. 2025, "LiNeS: post-training layer
  scaling prevents forgetting and enhances model merging" (layer scaling
  lambda(l) = alpha + beta (l - 1) / (L - 1)).

All trees passed together must have the same structure. Results keep each leaf's dtype
(arithmetic runs in at least float32). The array functions are jitted (one compilation per tree
structure and shapes; `density`, `scope` and `method` are static) and compose under an outer
`jax.jit`; `greedy_soup` calls a Python score function and is not.
"""

import functools
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.param.meta import BLOCK_NAME, unbox

Params = Any


def _acc_dtype(x):
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _stack(xs):
  """Leaves of one position across trees, stacked along a new leading axis in float32+."""
  return jnp.stack([jnp.asarray(x, _acc_dtype(xs[0])) for x in xs])


def _like(value, ref):
  return value.astype(jnp.result_type(ref))


def _check_nonempty(trees: Sequence[Params], what: str) -> None:
  if not len(trees):
    raise ValueError(f"{what} is empty: merging needs at least one tree")


# ------------------------------------------------------------------------------------- soups


def _mean(*xs):
  """theta_1 + mean_i (theta_i - theta_1): the mean, exactly theta_1 when all are equal."""
  stacked = _stack(xs)
  return _like(stacked[0] + jnp.mean(stacked - stacked[0], axis=0), xs[0])


@jax.jit
def uniform_soup(params_list: Sequence[Params]) -> Params:
  """Uniform soup (Wortsman et al. 2022, Sec. 2): theta = (1/k) sum_i theta_i, elementwise
  (computed as theta_1 + (1/k) sum_i (theta_i - theta_1), so a soup of copies is the copy)."""
  _check_nonempty(params_list, "params_list")
  return jax.tree.map(_mean, *params_list)


def greedy_soup(params_list: Sequence[Params],
                score_fn: Callable[[Params], Any]) -> tuple[Params, list[int]]:
  """Greedy soup (Wortsman et al. 2022, Recipe 1 "GreedySoup").

  Ingredients are visited in decreasing order of `score_fn` (held-out accuracy: higher is
  better; ties keep the input order). The best one starts the soup; each next one is kept when
  the uniform average of the kept ones plus it scores >= the current soup. Returns
  `(soup, kept)`: the uniform soup of the kept ingredients and their indices into
  `params_list`, in the order they were added. Calls `score_fn` 2k - 1 times for k ingredients.
  """
  _check_nonempty(params_list, "params_list")
  scores = np.array([float(score_fn(p)) for p in params_list])
  order = np.argsort(-scores, kind="stable")
  kept = [int(order[0])]
  soup, soup_score = uniform_soup(params_list[kept[0]:kept[0] + 1]), scores[order[0]]
  for i in order[1:]:
    candidate = uniform_soup([params_list[j] for j in kept + [int(i)]])
    score = float(score_fn(candidate))
    if score >= soup_score:
      kept.append(int(i))
      soup, soup_score = candidate, score
  return soup, kept


# ---------------------------------------------------------------------------- task vectors


@jax.jit
def task_vectors(base: Params, finetuned_list: Sequence[Params]) -> list[Params]:
  """Task vectors tau_i = theta_i - theta_base (Ilharco et al. 2023, Sec. 2)."""
  return [jax.tree.map(lambda f, b: _like(jnp.asarray(f, _acc_dtype(b)) - b, b), ft, base)
          for ft in finetuned_list]


@jax.jit
def task_arithmetic(base: Params, task_vectors: Sequence[Params], scale: Any = 1.0) -> Params:
  """Task arithmetic (Ilharco et al. 2023, Sec. 2): theta = theta_base + lambda * sum_i tau_i,
  with lambda = `scale` (a scalar; the paper tunes it on held-out data)."""
  _check_nonempty(task_vectors, "task_vectors")
  return jax.tree.map(
      lambda b, *ts: _like(jnp.asarray(b, _acc_dtype(b)) + scale * jnp.sum(_stack(ts), 0), b),
      base, *task_vectors)


# ----------------------------------------------------------------------------------- TIES


def _num_kept(density: float, size: int) -> int:
  """Entries a trim to `density` keeps: round(density * size), at least 1 when density > 0."""
  if not 0.0 <= density <= 1.0:
    raise ValueError(f"density must lie in [0, 1], got {density}")
  if density == 0.0 or size == 0:
    return 0
  return min(size, max(1, int(density * size + 0.5)))


def _top_k_mask(magnitude: jax.Array, k: int) -> jax.Array:
  """Boolean mask of the k largest entries of a 1-D array (ties: lower index first)."""
  if k == 0:
    return jnp.zeros(magnitude.shape, bool)
  if k == magnitude.size:
    return jnp.ones(magnitude.shape, bool)
  _, idx = jax.lax.top_k(magnitude, k)
  return jnp.zeros(magnitude.shape, bool).at[idx].set(True)


@functools.partial(jax.jit, static_argnames=("density", "scope"))
def magnitude_trim(task_vector: Params, density: float, *, scope: str = "tensor") -> Params:
  """TIES step 1, 'trim' (Yadav et al. 2023, Algorithm 1): keep the `density` fraction of entries
  with the largest magnitude, zero the rest.

  scope="tensor" ranks the entries of each parameter tensor separately (as mergekit does, so
  every tensor keeps its share); scope="global" ranks all entries of the task vector together
  (as Yadav et al.'s code does: it trims the flattened model). A tensor (or the whole vector)
  of n entries keeps round(density * n) of them, at least one when density > 0 (Yadav et al.'s
  code keeps one more: its kth-value threshold is inclusive).
  """
  if scope == "tensor":
    def trim(x):
      x = jnp.asarray(x)
      keep = _top_k_mask(jnp.abs(x).ravel(), _num_kept(density, x.size)).reshape(x.shape)
      return jnp.where(keep, x, jnp.zeros_like(x))
    return jax.tree.map(trim, task_vector)
  if scope == "global":
    leaves, treedef = jax.tree.flatten(task_vector)
    leaves = [jnp.asarray(x) for x in leaves]
    flat = jnp.concatenate([jnp.abs(x).ravel().astype(_acc_dtype(x)) for x in leaves])
    keep = _top_k_mask(flat, _num_kept(density, flat.size))
    splits = np.cumsum([x.size for x in leaves])[:-1]
    out = [jnp.where(m.reshape(x.shape), x, jnp.zeros_like(x))
           for x, m in zip(leaves, jnp.split(keep, splits))]
    return jax.tree.unflatten(treedef, out)
  raise ValueError(f"scope must be 'tensor' or 'global', got {scope!r}")


def _elect_and_merge(*taus):
  """TIES steps 2-3 on one leaf: elected sign s = sign(sum_t tau_t); disjoint mean of the
  entries whose sign equals s (zeros never agree; 0 where no entry agrees or s = 0)."""
  stacked = _stack(taus)
  elected = jnp.sign(jnp.sum(stacked, axis=0))
  agree = (jnp.sign(stacked) == elected) & (elected != 0)
  count = jnp.sum(agree, axis=0)
  total = jnp.sum(jnp.where(agree, stacked, 0), axis=0)
  return total / jnp.maximum(count, 1)


@functools.partial(jax.jit, static_argnames=("density", "scope"))
def ties_merge(base: Params, task_vectors: Sequence[Params], density: float,
               scale: Any = 1.0, *, scope: str = "tensor") -> Params:
  """TIES-Merging (Yadav et al. 2023, Algorithm 1): theta = theta_base + lambda * tau_m, where tau_m
  is, per coordinate, the mean of the trimmed task-vector entries whose sign matches the elected
  sign sign(sum_t trimmed tau_t) (0 where none does), and lambda = `scale`.

  Trimming: `magnitude_trim(tau, density, scope=scope)`: per tensor by default, scope="global"
  ranks the whole task vector as Yadav et al.'s code does. Where the trimmed entries sum to
  exactly 0 the elected sign is 0 and the coordinate stays at base (Yadav et al.'s code instead
  gives such coordinates the majority elected sign of the model). density=1 skips trimming.
  """
  _check_nonempty(task_vectors, "task_vectors")
  trimmed = [magnitude_trim(t, density, scope=scope) for t in task_vectors]
  merged = jax.tree.map(_elect_and_merge, *trimmed)
  return jax.tree.map(
      lambda b, m: _like(jnp.asarray(b, _acc_dtype(b)) + scale * m, b), base, merged)


# ------------------------------------------------------------------------------------ DARE


def dare(task_vector: Params, drop_rate: Any, rng: jax.Array) -> Params:
  """DARE (Yu et al. 2024): drop each delta independently with probability p =
  `drop_rate` and rescale the survivors by 1/(1-p), so E[dare(tau)] = tau.

  One Bernoulli draw from `rng` covers the concatenation of the flattened leaves (one random
  call per tree keeps compilation small). p = 1 drops all.
  """
  if isinstance(drop_rate, (int, float)) and not 0.0 <= drop_rate <= 1.0:
    raise ValueError(f"drop_rate must lie in [0, 1], got {drop_rate}")
  return _dare(task_vector, drop_rate, rng)


@jax.jit
def _dare(task_vector, drop_rate, rng):
  leaves, treedef = jax.tree.flatten(task_vector)
  leaves = [jnp.asarray(x) for x in leaves]
  keep = jax.random.bernoulli(rng, 1.0 - drop_rate, (sum(x.size for x in leaves),))
  masks = jnp.split(keep, np.cumsum([x.size for x in leaves])[:-1])

  def drop(x, keep):
    rescaled = jnp.asarray(x, _acc_dtype(x)) / jnp.maximum(1.0 - drop_rate, 1e-30)
    return jnp.where(keep.reshape(x.shape), rescaled, 0).astype(x.dtype)

  return jax.tree.unflatten(treedef, [drop(x, m) for x, m in zip(leaves, masks)])


def dare_merge(base: Params, task_vectors: Sequence[Params], drop_rate: Any, rng: jax.Array,
               method: str = "task_arithmetic", scale: Any = 1.0, density: float = 1.0,
               scope: str = "tensor") -> Params:
  """DARE then merge (Yu et al. 2024): task vector i is sparsified by
  `dare(tau_i, drop_rate, jax.random.split(rng, len(task_vectors))[i])`, then merged by
  method="task_arithmetic" (`task_arithmetic(base, ., scale)`) or method="ties"
  (`ties_merge(base, ., density, scale, scope=scope)`; the default density=1 replaces TIES'
  magnitude trim by DARE's random drop, as mergekit's dare_ties does)."""
  _check_nonempty(task_vectors, "task_vectors")
  keys = jax.random.split(rng, len(task_vectors))
  dropped = [dare(t, drop_rate, k) for t, k in zip(task_vectors, keys)]
  if method == "task_arithmetic":
    return task_arithmetic(base, dropped, scale)
  if method == "ties":
    return ties_merge(base, dropped, density, scale, scope=scope)
  raise ValueError(f"method must be 'task_arithmetic' or 'ties', got {method!r}")


# ----------------------------------------------------------------------------------- LiNeS

_UNIT = re.compile(BLOCK_NAME.pattern + r"|^dense_\d+$")
"""Module names that make one layer each: residual blocks (`block_<i>`, `<prefix>_block_<i>`,
jaxlab.param.meta.BLOCK_NAME) and the MLP's hidden layers (`dense_<i>`)."""
_LAST = re.compile(r"^(readout|final|head|lm_head|classifier)")
"""Module names after the last block: readout (and its bias), final norm, heads."""
_INT = re.compile(r"\d+")


def _key_name(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def layer_indices(params: Params) -> tuple[Params, int]:
  """(tree of 1-based layer indices l, L) for LiNeS, read from module names in the param paths.

  Layers in forward order: (1) everything before the first block (embeddings, stem, patch and
  position embeddings), when there is any; (2) one layer per block module (the first path
  component matching `block_<i>`, `<prefix>_block_<i>` or `dense_<i>`), ordered by the integers
  in its name (`stage_1_block_0` after `stage_0_block_9`, `block_10` after `block_9`);
  (3) everything whose path has a component starting with readout / final / head / lm_head /
  classifier (readout, final norm), when there is any. Any other module whose name holds
  integers (ConvNeXt's `downsample_<s>`, `downsample_<s>_norm`) joins the first block whose
  integers are >= its own (the block it feeds), else the last layer; one without integers
  joins the first layer. Boxed (ParamMeta) trees are unboxed; the result has the structure of
  the unboxed params. For other naming schemes pass your own depth tree to `lines_scale`.
  """
  params = unbox(params)
  paths = [tuple(_key_name(k) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(params)]

  def unit_of(names):
    return next((n for n in names if _UNIT.search(n)), None)

  def ints(name):
    return tuple(int(i) for i in _INT.findall(name))

  units = sorted({u for u in map(unit_of, paths) if u is not None}, key=lambda n: (ints(n), n))
  kinds = []
  for names in paths:
    unit = unit_of(names)
    if unit is not None:
      kinds.append(("unit", units.index(unit)))
    elif any(_LAST.match(n) for n in names):
      kinds.append(("last", None))
    else:
      numbered = [ints(n) for n in names if ints(n)]
      if not numbered:
        kinds.append(("first", None))
        continue
      after = [i for i, u in enumerate(units) if ints(u) >= numbered[0]]
      kinds.append(("unit", after[0]) if after else ("last", None))
  offset = int(any(k == "first" for k, _ in kinds))
  num_layers = offset + len(units) + int(any(k == "last" for k, _ in kinds))

  def index(kind):
    if kind[0] == "first":
      return 1
    return num_layers if kind[0] == "last" else offset + kind[1] + 1

  treedef = jax.tree.structure(params)
  return jax.tree.unflatten(treedef, [index(k) for k in kinds]), num_layers


def layer_depths(params: Params) -> Params:
  """Tree of relative depths (l - 1) / (L - 1) in [0, 1] (0 when L = 1), the fraction LiNeS
  scales by; l and L as in `layer_indices`: first layer 0, last layer 1."""
  indices, num_layers = layer_indices(params)
  return jax.tree.map(lambda l: (l - 1) / max(num_layers - 1, 1), indices)


@jax.jit
def lines_scale(task_vector: Params, depth_of: Params | None, alpha: Any,
                beta: Any) -> Params:
  """LiNeS (Wang et al. 2025): tau_l <- (alpha + beta * (l - 1) / (L - 1)) * tau_l, so
  the shallowest layer is scaled by alpha and the deepest by alpha + beta.

  `depth_of`: a tree with the structure of `task_vector` of relative depths (l - 1) / (L - 1);
  None reads them from the module names (`layer_depths`). For model merging, apply it to the
  merged (e.g. summed) task vector; for a single fine-tuned model, alpha small keeps the
  shallow layers close to the base model.
  """
  if depth_of is None:
    depth_of = layer_depths(task_vector)
  return jax.tree.map(
      lambda x, d: _like(jnp.asarray(x, _acc_dtype(x)) * (alpha + beta * d), x),
      task_vector, depth_of)
