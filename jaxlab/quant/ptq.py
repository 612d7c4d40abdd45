"""Post-training quantization (PTQ): calibration, integer export and error reports.

Scales (`compute_scale`) follow uniform affine quantization, r = S (q - Z) (Jacob et al. 2018,
eq. 1), on the grids of `quantizers.int_bounds`, from a clipping range [lo, hi] chosen by:
  absmax      [min(x), max(x)] (symmetric: +-max|x|), the scale `quantizers.int_scale` uses;
  percentile  the p-th percentile of |x| (symmetric) or the (100-p)-th / p-th percentiles of x;
  mse         the absmax range shrunk by the factor a in {1/K, 2/K, ..., 1} that minimises the
              quantization MSE mean((Q_a(x) - x)^2) of the tensor (a grid search, as in Banner
              et al. 2019 / Nagel et al. 2021, Sec. 3.4, but exhaustive instead of analytic).
Granularity: per_tensor (one scale) or per_channel (one scale per index of `axis`, for weights
the output channel: the last axis of Dense [in, out], Conv HWIO and Embed kernels).

Weights (`quantize_params`): every parameter whose role (`jaxlab.param.param_info`) is input,
hidden or readout becomes a `QuantizedTensor`: int8 codes (int4 and lower stored in int8), the
float scale and, if asymmetric, an int8 zero point; biases and norm gains stay float. Asymmetric
codes are stored shifted by -2^(b-1) (as is the zero point), so an 8-bit affine grid [0, 255]
fits int8; the shift cancels in S (q - Z).

Activations (`calibrate_activations`): the inputs of every weight op are recorded with
`flax.linen.intercept_methods`: each call of a module's `__call__` whose own params hold a
`kernel` (jaxlab Dense, Readout and Conv; flax nn.Dense / nn.Conv too) has its first positional
argument recorded under its module path ('dense_1', 'block_0/attn/qkv', ...). Not recorded: the
tied readout `Embed.attend` (a method other than __call__). The scales are computed on the
concatenation of the inputs of all calibration batches (so keep the calibration set small), seen
as [tokens, channels] (feature-major Dense inputs transposed, conv pixels as tokens).

Static activation quantization (`quantized_apply`): `QuantConfig`'s IntFormat computes its scale
from the tensor at run time and there is no static-scale format, so the calibrated activation
scales are applied by the same kind of interceptor: it fake-quantizes the input of each recorded
module with its `QScale` before the module runs (the weights come in dequantized). The result is
the network an integer engine with static activation scales would compute, up to float rounding.
With int8_matmul=True that engine runs: a jaxlab Dense (not feature-major) with 8-bit symmetric
codes and a per-tensor 8-bit symmetric input scale computes its matmul as
`pallas_kernels.int8_matmul` of the input codes and the exported weight codes and scales (int32
accumulation), then Dense's forward multiplier and bias; other weight ops keep the fake quant.
"""

import functools
import math
import re
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import pallas_kernels

from jaxlab.param import roles
from jaxlab.param.meta import ParamInfo, ParamMeta, param_info
from jaxlab.quant.policy import KEEP_FLOAT_ROLES, module_path
from jaxlab.quant.quantizers import (_nonzero, check_bits, check_choice, compute_dtype,
                                     int_bounds, int_quantize, reduce_axes)

METHODS = ("absmax", "percentile", "mse")
GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_ROLES = (roles.INPUT, roles.HIDDEN, roles.READOUT)


@struct.dataclass
class QScale:
  """Static scale S and zero point Z of one tensor (r = S (q - Z)), shaped to broadcast against
  it; Z is 0 when symmetric, else an integer in quantizers' unsigned grid [0, 2^b - 1]."""

  scale: jax.Array
  zero_point: jax.Array
  bits: int = struct.field(pytree_node=False, default=8)
  symmetric: bool = struct.field(pytree_node=False, default=True)

  def fake_quant(self, x: jax.Array) -> jax.Array:
    """S (clip(round(x / S) + Z) - Z), no gradient (inference); computed in float32 (float64
    for float64 x) and returned in x's dtype."""
    ct = compute_dtype(x.dtype)
    s, z = self.scale.astype(ct), self.zero_point.astype(ct)
    q = int_quantize(x, s, z, bits=self.bits, symmetric=self.symmetric)
    return ((q - z) * s).astype(x.dtype)


@struct.dataclass
class QuantizedTensor:
  """An exported integer tensor: int8 codes q, float scale (broadcasts against q) and, when
  asymmetric, an int8 zero point, both stored shifted by -2^(bits-1); value = scale (q - zp)."""

  q: jax.Array
  scale: jax.Array
  zero_point: jax.Array | None = None
  bits: int = struct.field(pytree_node=False, default=8)
  symmetric: bool = struct.field(pytree_node=False, default=True)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """scale (q - zp) computed in float32 (float64 for dtype float64), returned in `dtype`."""
    ct = compute_dtype(dtype)
    q = self.q.astype(ct)
    if self.zero_point is not None:
      q = q - self.zero_point.astype(ct)
    return (q * self.scale.astype(ct)).astype(dtype)


def _is_qt(x: Any) -> bool:
  return isinstance(x, QuantizedTensor)


# ---------------------------------------------------------------------------------------------
# Calibration of one tensor.


def scale_from_range(lo: jax.Array, hi: jax.Array, bits: int = 8,
                     symmetric: bool = True) -> QScale:
  """QScale for the clipping range [lo, hi]: symmetric S = max(-lo, hi) / qmax, Z = 0; affine
  (range widened to contain 0) S = (hi - lo) / (qmax - qmin), Z = qmin - round(lo / S)."""
  qmin, qmax = int_bounds(bits, symmetric)
  lo, hi = jnp.minimum(lo, 0), jnp.maximum(hi, 0)
  if symmetric:
    scale = _nonzero(jnp.maximum(-lo, hi) / qmax)
    return QScale(scale, jnp.zeros_like(scale), bits, True)
  scale = _nonzero((hi - lo) / (qmax - qmin))
  zero_point = jnp.clip(qmin - jnp.round(lo / scale), qmin, qmax)
  return QScale(scale, zero_point, bits, False)


def _check_options(bits, granularity, method, percentile, num_candidates):
  check_bits(bits)
  check_choice("granularity", granularity, GRANULARITIES)
  check_choice("calibration method", method, METHODS)
  if not 0 < percentile <= 100:
    raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
  if not isinstance(num_candidates, int) or num_candidates < 1:
    raise ValueError(f"num_candidates must be a positive integer, got {num_candidates!r}")


def _quant_mse(x, qs: QScale, axes) -> jax.Array:
  return jnp.mean(jnp.square(qs.fake_quant(x) - x), axis=axes, keepdims=True)


def compute_scale(x: jax.Array, *, bits: int = 8, symmetric: bool = True,
                  granularity: str = "per_tensor", axis: int | tuple[int, ...] = -1,
                  method: str = "absmax", percentile: float = 99.99,
                  num_candidates: int = 100) -> QScale:
  """Calibrated QScale of x (keepdims shape): clipping range from `method` (module docstring),
  one scale per tensor or per index of `axis` (per_channel). `percentile` is used by
  method='percentile', `num_candidates` (K, the grid of shrink factors) by method='mse'."""
  _check_options(bits, granularity, method, percentile, num_candidates)
  x = jnp.asarray(x, jnp.float32)
  axes = reduce_axes(x.ndim, granularity, axis)
  return _compute_scale(x, bits=bits, symmetric=symmetric, axes=axes, method=method,
                        percentile=float(percentile), num_candidates=num_candidates)


@functools.partial(jax.jit, static_argnames=("bits", "symmetric", "axes", "method", "percentile",
                                             "num_candidates"))
def _compute_scale(x, *, bits, symmetric, axes, method, percentile, num_candidates) -> QScale:
  x = jax.lax.stop_gradient(x)
  if method == "percentile":
    if symmetric:
      c = jnp.percentile(jnp.abs(x), percentile, axis=axes, keepdims=True)
      return scale_from_range(-c, c, bits, symmetric)
    lo = jnp.percentile(x, 100 - percentile, axis=axes, keepdims=True)
    hi = jnp.percentile(x, percentile, axis=axes, keepdims=True)
    return scale_from_range(lo, hi, bits, symmetric)
  lo = jnp.min(x, axis=axes, keepdims=True)
  hi = jnp.max(x, axis=axes, keepdims=True)
  if method == "absmax":
    return scale_from_range(lo, hi, bits, symmetric)
  factors = jnp.arange(1, num_candidates + 1, dtype=jnp.float32) / num_candidates
  errors = jax.lax.map(
      lambda a: _quant_mse(x, scale_from_range(a * lo, a * hi, bits, symmetric), axes),
      factors, batch_size=min(num_candidates, 16))  # [K, *keepdims shape]
  best = factors[jnp.argmin(errors, axis=0)]  # first (smallest) factor among ties
  return scale_from_range(best * lo, best * hi, bits, symmetric)


@jax.jit
def quantize_tensor(x: jax.Array, qscale: QScale) -> QuantizedTensor:
  """Integer export of x with a calibrated QScale (codes clipped to the grid)."""
  codes = int_quantize(jnp.asarray(x, jnp.float32), qscale.scale, qscale.zero_point,
                       bits=qscale.bits, symmetric=qscale.symmetric)
  if qscale.symmetric:
    return QuantizedTensor(codes.astype(jnp.int8), qscale.scale, None, qscale.bits, True)
  shift = 2 ** (qscale.bits - 1)
  return QuantizedTensor((codes - shift).astype(jnp.int8), qscale.scale,
                         (qscale.zero_point - shift).astype(jnp.int8), qscale.bits, False)


# ---------------------------------------------------------------------------------------------
# Weights: export and dequantization of a params tree.


def path_str(path: tuple) -> str:
  """'dense_0/kernel' from a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _is_info(x: Any) -> bool:
  return isinstance(x, ParamInfo)


def _has_boxes(tree: Any) -> bool:
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  return any(isinstance(x, ParamMeta) for x in leaves)


def quantize_params(params: Any, info: Any = None, *, bits: int = 8,
                    granularity: str = "per_channel", method: str = "absmax",
                    symmetric: bool = True, percentile: float = 99.99, num_candidates: int = 100,
                    keep_float: str | None = None) -> Any:
  """The params tree with every weight replaced by a `QuantizedTensor`.

  Weights are the leaves whose `info` (a `param_info` tree) role is input, hidden or readout;
  info=None takes it from ParamMeta boxes in `params`, or, for unboxed params, treats every leaf
  of rank >= 2 as a weight. per_channel = one scale per index of the last axis (the output
  channel). keep_float: a regex; weights whose module path ('dense_0', 'block_0/attn/qkv')
  matches it fully stay float (e.g. `float_layers(info)`). Returns unboxed leaves.
  """
  _check_options(bits, granularity, method, percentile, num_candidates)
  if info is None and _has_boxes(params):
    info = param_info(params)
  params = nn.meta.unbox(params)
  kw = dict(bits=bits, symmetric=symmetric, granularity=granularity, axis=-1, method=method,
            percentile=percentile, num_candidates=num_candidates)

  def quantize(path, w, meta=None):
    is_weight = meta.role in WEIGHT_ROLES if meta is not None else jnp.ndim(w) >= 2
    module = path_str(path[:-1])
    if not is_weight or (keep_float is not None and re.fullmatch(keep_float, module)):
      return w
    return quantize_tensor(w, compute_scale(w, **kw))

  if info is None:
    return jax.tree_util.tree_map_with_path(quantize, params)
  return jax.tree_util.tree_map_with_path(quantize, params, info)


def float_layers(info: Any, keep_roles: tuple[str, ...] = KEEP_FLOAT_ROLES) -> str:
  """A keep_float regex matching exactly the module paths of the weights (in a `param_info`
  tree) whose role is in keep_roles; by default the layers the integer QAT policies keep in
  float (jaxlab.quant.policy: first layer and readout)."""
  paths = []
  for path, meta in jax.tree_util.tree_leaves_with_path(info, is_leaf=_is_info):
    if meta.role in WEIGHT_ROLES and meta.role in keep_roles:
      paths.append(path_str(path[:-1]))
  return "|".join(re.escape(p) for p in sorted(set(paths)))


def dequantize(qparams: Any, dtype=jnp.float32) -> Any:
  """Float params: every QuantizedTensor replaced by scale (q - zp); other leaves unchanged."""
  return jax.tree.map(lambda x: x.dequantize(dtype) if _is_qt(x) else x, qparams, is_leaf=_is_qt)


# ---------------------------------------------------------------------------------------------
# Activations: recording the inputs of the weight ops and calibrating their scales.


def _is_weight_op(context) -> bool:
  return context.method_name == "__call__" and context.module.has_variable("params", "kernel")


def _as_tokens(x: jax.Array, feature_major: bool) -> jax.Array:
  """[tokens, channels] view of a weight op's input."""
  x = jnp.asarray(x)
  return x.reshape(x.shape[0], -1).T if feature_major else x.reshape(-1, x.shape[-1])


def record_weight_op_calls(model: nn.Module, params: Any, x: jax.Array,
                           **kwargs) -> tuple[Any, list[tuple[str, nn.Module, jax.Array]]]:
  """(model output, [(module path, unbound clone of the module, its input), ...]) in call order,
  for every weight op (see the module docstring); kwargs go to model.apply."""
  calls = []

  def record(next_fun, args, kw, context):
    if _is_weight_op(context) and args:
      module = context.module
      calls.append((module_path(module), module.clone(parent=None, name=None), args[0]))
    return next_fun(*args, **kw)

  with nn.intercept_methods(record):
    out = model.apply({"params": nn.meta.unbox(params)}, x, **kwargs)
  return out, calls


def _batch_arrays(batch: Any, input_key: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(inputs of the real examples, their labels or None) from an array or a data batch dict
  (padded eval examples, mask 0, are dropped)."""
  if not isinstance(batch, dict):
    return batch, None
  if input_key not in batch:
    raise ValueError(f"batch has no input key {input_key!r}; keys: {', '.join(batch)}")
  x, y = batch[input_key], batch.get("label")
  if "mask" in batch:
    keep = np.asarray(batch["mask"]) > 0
    x, y = np.asarray(x)[keep], (None if y is None else np.asarray(y)[keep])
  return x, y


def layer_inputs(model: nn.Module, params: Any, batches: Iterable[Any], *,
                 input_key: str = "image") -> dict[str, jax.Array]:
  """{module path: [tokens, channels] inputs of that weight op over all batches}. A batch is an
  input array or a data dict (`input_key`, optional 'mask')."""
  found: dict[str, list] = {}
  for batch in batches:
    x, _ = _batch_arrays(batch, input_key)
    _, calls = record_weight_op_calls(model, params, x)
    for path, module, inp in calls:
      found.setdefault(path, []).append(_as_tokens(inp, getattr(module, "feature_major", False)))
  return {path: jnp.concatenate(xs, axis=0) for path, xs in found.items()}


def calibrate_activations(model: nn.Module, params: Any, batches: Iterable[Any], *,
                          bits: int = 8, symmetric: bool = True, granularity: str = "per_tensor",
                          method: str = "absmax", percentile: float = 99.99,
                          num_candidates: int = 100,
                          input_key: str = "image") -> dict[str, QScale]:
  """{module path: QScale of its input} from the float model on the calibration batches; scales
  have shape () (per_tensor) or [channels] (per_channel: one per input feature, fine for fake
  quant, while an integer matmul needs per_tensor activations)."""
  _check_options(bits, granularity, method, percentile, num_candidates)
  out = {}
  for path, x in layer_inputs(model, params, batches, input_key=input_key).items():
    qs = compute_scale(x, bits=bits, symmetric=symmetric, granularity=granularity, axis=-1,
                       method=method, percentile=percentile, num_candidates=num_candidates)
    shape = () if granularity == "per_tensor" else (x.shape[-1],)
    out[path] = QScale(qs.scale.reshape(shape), qs.zero_point.reshape(shape), bits, symmetric)
  return out


def _int8_kernel(module: nn.Module, qparams: Any, qs: QScale) -> QuantizedTensor | None:
  """The module's exported kernel if the int8 engine can run it (module docstring), else None."""
  if getattr(module, "feature_major", True) or not hasattr(module, "ctx"):
    return None
  qt = functools.reduce(lambda t, k: t[k], module.scope.path, qparams).get("kernel")
  int8 = lambda q: q.bits == 8 and q.symmetric  # noqa: E731
  if not (_is_qt(qt) and int8(qt) and int8(qs) and qs.scale.ndim == 0 and qt.q.ndim == 2):
    return None
  return qt


def _int8_dense(module: nn.Module, x: jax.Array, qt: QuantizedTensor, qs: QScale) -> jax.Array:
  """Dense's y = m_W (x @ W) + m_b b with x @ W as int8_matmul(codes of x under qs, qt.q)."""
  p, (fan_in, features) = module.ctx.parametrization, qt.q.shape
  x2 = x.reshape(-1, fan_in)
  x_q = int_quantize(x2, qs.scale, bits=8).astype(jnp.int8)
  y = pallas_kernels.int8_matmul(x_q, qt.q, qs.scale, qt.scale.reshape(features))
  batch = x2.shape[0]
  y = y * p.op_scales(module.role, fan_in, features, batch).out
  if module.use_bias:
    y = y + module.get_variable("params", "bias") * p.op_scales(roles.BIAS, 1, features, batch).out
  return y.reshape(*x.shape[:-1], features).astype(module.ctx.dtype)


def quantized_apply(model: nn.Module, qparams: Any, x: jax.Array, *,
                    act_scales: dict[str, QScale] | None = None, int8_matmul: bool = False,
                    **kwargs) -> jax.Array:
  """model.apply with dequantized weights and, for the module paths in `act_scales`, inputs
  fake-quantized with the calibrated static scales (through an interceptor); int8_matmul: the
  Dense ops that can run as int8 x int8 matmuls do (module docstring)."""
  qparams = nn.meta.unbox(qparams)
  params = dequantize(qparams)
  if not act_scales:
    return model.apply({"params": params}, x, **kwargs)

  def fake_quant_input(next_fun, args, kw, context):
    path = module_path(context.module) if _is_weight_op(context) and args else None
    if path not in act_scales:
      return next_fun(*args, **kw)
    qs = act_scales[path]
    qt = _int8_kernel(context.module, qparams, qs) if int8_matmul and not kw else None
    if qt is not None:
      return _int8_dense(context.module, args[0], qt, qs)
    if qs.scale.ndim and getattr(context.module, "feature_major", False):
      qs = QScale(qs.scale[:, None], qs.zero_point[:, None], qs.bits, qs.symmetric)
    return next_fun(qs.fake_quant(args[0]), *args[1:], **kw)

  with nn.intercept_methods(fake_quant_input):
    return model.apply({"params": params}, x, **kwargs)


# ---------------------------------------------------------------------------------------------
# Error reports.


def tensor_error(w: Any, w_hat: Any) -> dict[str, float]:
  """relative error ||W - W_hat|| / ||W||, max |W - W_hat| and SQNR = 10 log10(||W||^2 /
  ||W - W_hat||^2) dB (inf for an exact copy), in float64."""
  w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
  err2, sig2 = float(np.sum(np.square(w - w_hat))), float(np.sum(np.square(w)))
  return {"rel_error": math.sqrt(err2 / sig2) if sig2 > 0 else math.sqrt(err2),
          "max_abs_error": float(np.max(np.abs(w - w_hat))) if w.size else 0.0,
          "sqnr_db": 10 * math.log10(sig2 / err2) if err2 > 0 else math.inf}


def weight_report(params: Any, qparams: Any) -> dict[str, dict[str, float]]:
  """{param path ('dense_0/kernel'): tensor_error + bits} for every quantized weight."""
  params = nn.meta.unbox(params)
  out = {}

  def visit(path, qt, w):
    if _is_qt(qt):
      out[path_str(path)] = dict(tensor_error(w, qt.dequantize()), bits=qt.bits)

  jax.tree_util.tree_map_with_path(visit, qparams, params, is_leaf=_is_qt)
  return out


def model_report(model: nn.Module, params: Any, qparams: Any, batches: Iterable[Any], *,
                 act_scales: dict[str, QScale] | None = None,
                 input_key: str = "image") -> dict[str, float]:
  """Float model vs the model with dequantized weights (and static activation fake quant if
  `act_scales`): logits_rel_error ||Z - Z_q||_F / ||Z||_F over all examples, top1_agreement
  (fraction of equal argmax), num_examples, and float_accuracy / quant_accuracy if the batches
  carry labels."""
  params = nn.meta.unbox(params)
  zs, zqs, ys = [], [], []
  for batch in batches:
    x, y = _batch_arrays(batch, input_key)
    zs.append(np.asarray(model.apply({"params": params}, x), np.float64))
    zqs.append(np.asarray(quantized_apply(model, qparams, x, act_scales=act_scales), np.float64))
    ys.append(y)
  z, zq = np.concatenate(zs), np.concatenate(zqs)
  top, top_q = z.argmax(-1), zq.argmax(-1)
  out = {"logits_rel_error": float(np.linalg.norm(z - zq) / np.linalg.norm(z)),
         "top1_agreement": float(np.mean(top == top_q)), "num_examples": int(len(z))}
  if ys and all(y is not None for y in ys):
    y = np.concatenate(ys)
    out.update(float_accuracy=float(np.mean(top == y)), quant_accuracy=float(np.mean(top_q == y)))
  return out


def error_report(params: Any, qparams: Any, *, model: nn.Module | None = None,
                 batches: Iterable[Any] | None = None,
                 act_scales: dict[str, QScale] | None = None,
                 input_key: str = "image") -> dict[str, Any]:
  """{'weights': weight_report, 'model': model_report (only when model and batches are given)}."""
  out = {"weights": weight_report(params, qparams)}
  if model is not None and batches is not None:
    out["model"] = model_report(model, params, qparams, batches, act_scales=act_scales,
                                input_key=input_key)
  return out


def format_report(report: dict[str, Any]) -> str:
  """A plain-text table of an `error_report`."""
  lines = [f"{'weight':<32} {'bits':>4} {'rel err':>9} {'max abs err':>11} {'SQNR dB':>8}"]
  for path, r in report["weights"].items():
    lines.append(f"{path:<32} {r['bits']:>4} {r['rel_error']:>9.2e} {r['max_abs_error']:>11.2e}"
                 f" {r['sqnr_db']:>8.2f}")
  for key, value in report.get("model", {}).items():
    lines.append(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
  return "\n".join(lines)
