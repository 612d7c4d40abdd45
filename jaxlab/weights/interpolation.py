"""Linear mode connectivity and re-normalising the interpolated network.

Along the straight path theta(l) = (1 - l) theta_A + l theta_B the loss barrier is
max_l [L(theta(l)) - ((1 - l) L(theta_A) + l L(theta_B))] (Frankle et al. 2020; Entezari et al.
2022). Jordan et al. 2023 ("REPAIR") show that much of the barrier of aligned networks is a
collapse of the interpolated network's per-unit activation statistics, and remove it by
rescaling each unit of the interpolated network so that its mean and standard deviation are the
interpolation of the endpoints' (REPAIR), or its standard deviation alone (RESCALE). Here the
correction is folded into the parameters of the layers that produce the units (a Dense / Conv with
a bias, or a norm's gain and bias), so the repaired network is an ordinary params tree of the same
model; layers without a bias (or a following norm) are left alone.
"""

import functools
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.weights import permutation


def interpolate(params_a: Any, params_b: Any, lam: float) -> Any:
  """(1 - lam) * A + lam * B, leaf by leaf."""
  return jax.tree.map(lambda a, b: (1 - lam) * a + lam * b, params_a, params_b)


def path_curve(eval_fn: Callable[[Any], dict], params_a: Any, params_b: Any,
               num: int = 25) -> dict[str, np.ndarray]:
  """eval_fn (params -> {'loss': ..., 'accuracy': ...}) at `num` evenly spaced points of the
  path from A (lam=0) to B (lam=1); {'lam': [num], metric: [num], ...}."""
  lams = np.linspace(0.0, 1.0, num)
  rows = [jax.device_get(eval_fn(interpolate(params_a, params_b, float(l)))) for l in lams]
  return {"lam": lams, **{k: np.asarray([float(r[k]) for r in rows]) for k in rows[0]}}


def barrier(values: Sequence[float], lams: Sequence[float]) -> float:
  """max_l [v(l) - ((1 - l) v(0) + l v(1))] over the sampled points (lams from 0 to 1); for an
  accuracy pass its negative (or 1 - accuracy, the error)."""
  v, l = np.asarray(values, np.float64), np.asarray(lams, np.float64)
  return float(np.max(v - ((1 - l) * v[0] + l * v[-1])))


def _is_unit_layer(module: nn.Module) -> bool:
  """A layer whose per-unit output can be re-scaled by its own parameters: it has a 'bias'."""
  return "bias" in (module.variables.get("params") or {})


def unit_layers(model: nn.Module, variables: Any, x: Any) -> list[tuple[str, ...]]:
  """Module paths (in call order) of the layers REPAIR corrects: those with a bias whose output's
  last axis is the bias's units and whose units are hidden units (a permutation group of the
  model, jaxlab.weights.permutation: not the logits)."""
  spec = permutation.permutation_spec(model.apply, variables, x)
  _, state = model.apply(
      variables, x, capture_intermediates=lambda m, method: (
          method == "__call__" and _is_unit_layer(m)), mutable=["intermediates"])
  paths = []
  for path, ys in flax.traverse_util.flatten_dict(state["intermediates"]).items():
    module, y = path[:-1], ys[0]
    if not hasattr(y, "shape"):  # a layer returning several arrays: not a unit layer
      continue
    bias = _get(variables["params"], module + ("bias",))
    hidden = spec.axes.get("/".join(("params",) + module + ("bias",))) not in (None, (None,))
    if bias is not None and np.ndim(bias) == 1 and y.shape[-1] == bias.shape[0] and hidden:
      paths.append(module)
  return list(dict.fromkeys(paths))


def _get(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def _unit_stats(model, variables, x, layers):
  wanted = set(layers)

  def capture(m, method):
    return method == "__call__" and tuple(m.scope.path) in wanted

  _, state = model.apply(variables, x, capture_intermediates=capture, mutable=["intermediates"])
  stats = {}
  for path, ys in flax.traverse_util.flatten_dict(state["intermediates"]).items():
    y = ys[0].reshape(-1, ys[0].shape[-1]).astype(jnp.float32)
    stats[path[:-1]] = (y.mean(0), y.std(0))
  return stats


def unit_stats(model: nn.Module, variables: Any, x: Any,
               layers: Sequence[tuple[str, ...]]) -> dict[tuple, tuple[jax.Array, jax.Array]]:
  """Per-unit (mean, std) of each layer's output over every other axis (batch, space, tokens);
  one jitted forward pass (compiled once per model, input shape and layer set)."""
  return _unit_stats(model, variables, x, tuple(tuple(layer) for layer in layers))


def repair(model: nn.Module, variables_a: Any, variables_b: Any, lam: float, x: Any, *,
           rescale_only: bool = False, layers: Sequence[tuple[str, ...]] | None = None,
           eps: float = 1e-5) -> Any:
  """The interpolated network at `lam` with every unit layer's output re-normalised to the
  interpolated endpoint statistics on the batch x (Jordan et al. 2023, Sec. 4: mu_t = (1-l) mu_A
  + l mu_B, sigma_t likewise; RESCALE: sigma only). Layers are corrected one after the other in
  call order, each measured with the earlier corrections in place (as REPAIR's re-estimated
  BatchNorm statistics are). Folded into the layer: its non-bias parameters' units scale by
  s = sigma_t / sigma and its bias becomes (b - mu) * s + mu_t (RESCALE keeps the mean:
  (b - mu) * s + mu), so each unit's output becomes (y - mu) * s + mu_t."""
  layers = list(unit_layers(model, variables_a, x) if layers is None else layers)
  stats_a = unit_stats(model, variables_a, x, layers)
  stats_b = unit_stats(model, variables_b, x, layers)
  params = interpolate(variables_a["params"], variables_b["params"], lam)
  others = {k: v for k, v in variables_a.items() if k != "params"}
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  for layer in layers:  # all layers measured in one pass (one compile); the later ones unused
    current = {"params": flax.traverse_util.unflatten_dict(flat), **others}
    mu, sigma = unit_stats(model, current, x, layers)[layer]
    (mu_a, sd_a), (mu_b, sd_b) = stats_a[layer], stats_b[layer]
    mu_t = (1 - lam) * mu_a + lam * mu_b
    sd_t = (1 - lam) * sd_a + lam * sd_b
    s = sd_t / jnp.maximum(sigma, eps)  # a constant unit stays constant
    target = mu if rescale_only else mu_t
    for path in [p for p in flat if p[:len(layer)] == layer and len(p) == len(layer) + 1]:
      w = flat[path]
      if path[-1] == "bias":
        flat[path] = ((w - mu) * s + target).astype(w.dtype)
      elif w.shape and w.shape[-1] == s.shape[0]:
        flat[path] = (w * s).astype(w.dtype)
  return {"params": flax.traverse_util.unflatten_dict(flat), **others}
