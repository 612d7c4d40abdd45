"""Data-free quantization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"): cross-layer range equalization (CLE) and quantization bias correction.

Cross-layer equalization of two consecutive Dense layers with a positively homogeneous
activation f between them (f(s z) = s f(z) for s > 0: relu, identity),
  y = f(x W1 + b1) W2 + b2,   W1 [in, h] (column i = output channel i), W2 [h, out] (row i).
Per channel i of the hidden layer let r1_i = max|W1[:, i]| and r2_i = max|W2[i, :]|. With
  s_i = sqrt(r1_i / r2_i),   W1[:, i] /= s_i,  b1[i] /= s_i,  W2[i, :] *= s_i
the function is unchanged (f(z / s) s = f(z)) and both ranges become
r1_i / s_i = r2_i s_i = sqrt(r1_i r2_i) (the paper's S = diag(s) with its W1 = our W1^T:
W1' = S^-1 W1, W2' = W2 S). Channels with r1_i = 0 or r2_i = 0 keep s_i = 1.
In a chain W1, W2, ..., WL, equalizing one pair changes the ranges seen by its neighbours, so
the pairs are swept repeatedly until every s_i is 1 within `tol` (the paper's iteration).

Bias correction (the paper's empirical variant): quantizing W shifts the expected output by
E[x W_q] - E[x W] = E[x] (W_q - W); subtracting it from the bias makes the mean output of the
quantized layer over the calibration data equal the float layer's.
"""

import re
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.quant.ptq import QuantizedTensor, _batch_arrays, record_weight_op_calls

HOMOGENEOUS_ACTIVATIONS = ("relu", "identity")


def _value(x: Any) -> Any:
  return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x


def _like(old: Any, new: jax.Array) -> Any:
  """new in old's metadata box, if it had one."""
  return old.replace_boxed(new) if isinstance(old, nn.meta.AxisMetadata) else new


def _check_dense(name: str, w: jax.Array) -> None:
  if jnp.ndim(w) != 2:
    raise ValueError(f"{name}: cross-layer equalization handles Dense kernels [in, out]; got a "
                     f"kernel of shape {jnp.shape(w)}")


def pair_ranges(w1: jax.Array, w2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(r1, r2): r1_i = max|W1[:, i]| (output channel i of layer 1), r2_i = max|W2[i, :]| (input
  channel i of layer 2)."""
  _check_dense("w1", w1)
  _check_dense("w2", w2)
  if w1.shape[1] != w2.shape[0]:
    raise ValueError(f"w1 {w1.shape} and w2 {w2.shape} do not chain (w1 columns != w2 rows)")
  return jnp.max(jnp.abs(w1), axis=0), jnp.max(jnp.abs(w2), axis=1)


def equalization_scales(w1: jax.Array, w2: jax.Array) -> jax.Array:
  """s_i = sqrt(r1_i / r2_i) (1 where either range is 0); see the module docstring."""
  r1, r2 = pair_ranges(w1, w2)
  ok = (r1 > 0) & (r2 > 0)
  return jnp.where(ok, jnp.sqrt(r1 / jnp.where(ok, r2, 1.0)), 1.0)


def equalize_pair(w1: jax.Array, b1: jax.Array | None, w2: jax.Array):
  """(W1 / s, b1 / s, W2 * s[:, None], s): both layers' ranges of channel i become
  sqrt(r1_i r2_i); the network's function is unchanged (b1 may be None)."""
  s = equalization_scales(w1, w2)
  return w1 / s, (None if b1 is None else b1 / s), w2 * s[:, None], s


def equalize_chain(params: Any, names: Sequence[str], *, max_iter: int = 100,
                   tol: float = 1e-5) -> Any:
  """Sweeps `equalize_pair` over the consecutive Dense layers params[names[k]] ('kernel',
  optional 'bias'), k = 0..len(names)-2, until max |s_i - 1| <= tol or `max_iter` sweeps.
  Only valid with a positively homogeneous activation between every pair. Returns new params
  (ParamMeta boxes, if any, are kept)."""
  if len(names) < 2:
    raise ValueError(f"cross-layer equalization needs at least 2 layers, got {list(names)}")
  missing = [n for n in names if n not in params or "kernel" not in params[n]]
  if missing:
    raise ValueError(f"no Dense params (a dict with 'kernel') for {missing}; "
                     f"available: {', '.join(params)}")
  if not isinstance(max_iter, int) or max_iter < 1:
    raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
  kernels = [jnp.asarray(_value(params[n]["kernel"])) for n in names]
  work = list(kernels)
  total = [jnp.ones(w.shape[1], w.dtype) for w in kernels[:-1]]  # product of the s per boundary
  for _ in range(max_iter):
    change = 0.0
    for k in range(len(names) - 1):
      work[k], _, work[k + 1], s = equalize_pair(work[k], None, work[k + 1])
      total[k] = total[k] * s
      change = max(change, float(jnp.max(jnp.abs(s - 1.0))))
    if change <= tol:
      break
  # Apply the accumulated scales once (one rounding per weight, however many sweeps ran).
  ones = [jnp.ones(kernels[0].shape[0], kernels[0].dtype)]
  col = total + [jnp.ones(kernels[-1].shape[1], kernels[-1].dtype)]
  row = ones + total
  kernels = [w * r[:, None] / c for w, r, c in zip(kernels, row, col)]
  biases = [None if "bias" not in params[n] else jnp.asarray(_value(params[n]["bias"])) / c
            for n, c in zip(names, col)]
  out = dict(params)
  for n, w, b in zip(names, kernels, biases):
    layer = dict(params[n], kernel=_like(params[n]["kernel"], w))
    if b is not None:
      layer["bias"] = _like(params[n]["bias"], b)
    out[n] = layer
  return out


def mlp_layer_names(params: Any) -> list[str]:
  """['dense_0', ..., 'dense_{n-1}', 'readout'] of a jaxlab MLP's params (readout if present)."""
  found = {int(m.group(1)): k for k in params if (m := re.fullmatch(r"dense_(\d+)", k))}
  if sorted(found) != list(range(len(found))):
    raise ValueError(f"MLP Dense layers must be dense_0..dense_{{n-1}}; got {sorted(found)}")
  names = [found[i] for i in range(len(found))] + (["readout"] if "readout" in params else [])
  if len(names) < 2:
    raise ValueError(f"cross-layer equalization needs at least 2 Dense layers; params hold "
                     f"{', '.join(params) or 'nothing'}")
  return names


def equalize_mlp(params: Any, *, activation: str = "relu", max_iter: int = 100,
                 tol: float = 1e-5) -> Any:
  """Cross-layer equalization of a `jaxlab.models.MLP` (dense_0 -> ... -> readout); the MLP's
  `activation` must be positively homogeneous (relu, identity)."""
  if activation not in HOMOGENEOUS_ACTIVATIONS:
    raise ValueError(f"cross-layer equalization needs a positively homogeneous activation "
                     f"(f(s z) = s f(z), s > 0); got activation {activation!r}; valid: "
                     f"{', '.join(HOMOGENEOUS_ACTIVATIONS)}")
  return equalize_chain(params, mlp_layer_names(params), max_iter=max_iter, tol=tol)


# ---------------------------------------------------------------------------------------------
# Bias correction.


def bias_correction(kernel: jax.Array, bias: jax.Array, kernel_q: jax.Array,
                    x_mean: jax.Array) -> jax.Array:
  """b - E[x] (W_q - W) for a Dense y = x W + b, W [in, out], given E[x] [in] (Nagel et al.
  2019, empirical bias correction: E[x] from calibration data)."""
  return bias - jnp.asarray(x_mean) @ (jnp.asarray(kernel_q) - jnp.asarray(kernel))


def _dequantized(x: Any) -> jax.Array:
  return x.dequantize() if isinstance(x, QuantizedTensor) else jnp.asarray(x)


def _subtree(tree: Any, path: str) -> Any:
  for key in path.split("/") if path else ():
    tree = tree[key]
  return tree


def _mean_over_tokens(y: jax.Array, feature_major: bool) -> tuple[jax.Array, int]:
  """(sum over every axis but the channel axis, number of summed positions)."""
  axes = tuple(range(1, y.ndim)) if feature_major else tuple(range(y.ndim - 1))
  return jnp.sum(y, axis=axes), y.size // y.shape[0 if feature_major else -1]


def correct_biases(model: nn.Module, params: Any, qparams: Any, batches: Iterable[Any], *,
                   input_key: str = "image") -> Any:
  """qparams (from `quantize_params`) with the float bias of every weight op whose kernel was
  quantized corrected by the mean output shift over the calibration batches.

  The shift is measured through the layer itself, on the float model's inputs of that layer:
  delta = mean(layer(x; W_q, b) - layer(x; W, b)) = m_W E[x] (W_q - W) for a Dense with forward
  multiplier m_W, then b -= delta / m_b (m_b: the bias multiplier, measured the same way), so
  any parametrization and Conv layers are handled too."""
  params = nn.meta.unbox(params)
  sums: dict[str, tuple[jax.Array, int, jax.Array]] = {}
  for batch in batches:
    x, _ = _batch_arrays(batch, input_key)
    _, calls = record_weight_op_calls(model, params, x)
    for path, module, inp in calls:
      float_p, quant_p = _subtree(params, path), _subtree(qparams, path)
      if "bias" not in float_p or not isinstance(quant_p.get("kernel"), QuantizedTensor):
        continue
      fm = getattr(module, "feature_major", False)
      layer_q = dict(float_p, kernel=_dequantized(quant_p["kernel"]))
      delta, n = _mean_over_tokens(module.apply({"params": layer_q}, inp)
                                   - module.apply({"params": float_p}, inp), fm)
      if path in sums:
        old_delta, old_n, m_b = sums[path]
        sums[path] = (old_delta + delta, old_n + n, m_b)
      else:
        ones = dict(float_p, bias=float_p["bias"] + 1)
        m_b, nb = _mean_over_tokens(module.apply({"params": ones}, inp)
                                    - module.apply({"params": float_p}, inp), fm)
        sums[path] = (delta, n, m_b / nb)
  out = jax.tree.map(lambda x: x, qparams, is_leaf=lambda x: isinstance(x, QuantizedTensor))
  for path, (delta, n, m_b) in sums.items():
    layer = _subtree(out, path)
    layer["bias"] = jnp.asarray(layer["bias"]) - delta / n / m_b
  return out
