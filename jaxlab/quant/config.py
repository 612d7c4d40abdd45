"""QuantConfig (which format the weights, activations and gradients of one op use) and the
quantized `dot_general` / `conv_general_dilated` built from it.

Formats (frozen dataclasses, hashable, so a policy can sit in a Flax module's fields):
  IntFormat      b-bit integer fake quant (b in 2..8), symmetric or affine, nearest or stochastic
                 rounding, identity or clipped STE (`quantizers.int_fake_quant`);
  LSQFormat      learned step size (Esser et al. 2020); the step is a parameter the caller owns
                 (jaxlab Dense / Conv: params 'weight_step' / 'activation_step');
  BinaryFormat   BinaryConnect sign or XNOR-Net sign * mean|W|;
  TernaryFormat  ternary weight networks (threshold 0.7 mean|W|);
  FP8Format      e4m3 / e5m2 with current or delayed scaling; delayed scaling reads per-tensor
                 amax histories the caller owns (jaxlab Dense / Conv: collection 'quant_state';
                 passed to the op as quant_state=; see `jaxlab.quant.fp8`).

Granularity inside an op: per_tensor is one scale per operand; per_channel (weights) and
per_token (activations) are the same rule seen from the two sides: one scale per element of the
operand's free axes, i.e. the statistic reduces over the axes the op contracts (a Dense kernel
[in, out] gets one scale per output channel, activations [tokens, in] one per token). With these
scales an integer matmul reproduces the fake-quant matmul: sum_k (s_i q_ik)(t_j w_kj) =
s_i t_j sum_k q_ik w_kj. For convolutions the weight contracts over its spatial and input-feature
axes and the activation over its feature axis (per_token = one scale per pixel: fine for fake
quant; an integer convolution needs per_tensor activations).
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxlab.quant import fp8, quantizers as qz
from jaxlab.quant.quantizers import GRANULARITIES, ROUNDINGS, STES, check_bits, check_choice


@dataclasses.dataclass(frozen=True)
class IntFormat:
  """Integer fake quant; scale from the tensor (max|x| symmetric, min/max affine)."""

  bits: int = 8
  symmetric: bool = True
  granularity: str = "per_tensor"
  rounding: str = "nearest"
  ste: str = "identity"

  def __post_init__(self):
    check_bits(self.bits)
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("rounding", self.rounding, ROUNDINGS)
    check_choice("ste", self.ste, STES)


@dataclasses.dataclass(frozen=True)
class LSQFormat:
  """LSQ with a per-tensor (or broadcastable) learned step passed to the op (`lhs_step=`...)."""

  bits: int = 4
  signed: bool = True

  def __post_init__(self):
    check_bits(self.bits)


@dataclasses.dataclass(frozen=True)
class BinaryFormat:
  """scaled=False: BinaryConnect sign(W); scaled=True: XNOR-Net mean|W| * sign(W)."""

  scaled: bool = True
  granularity: str = "per_channel"
  ste: str = "clipped"

  def __post_init__(self):
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("ste", self.ste, STES)


@dataclasses.dataclass(frozen=True)
class TernaryFormat:
  """TWN: alpha * {-1, 0, +1} with threshold `threshold` * mean|W|."""

  threshold: float = 0.7
  granularity: str = "per_channel"
  ste: str = "identity"

  def __post_init__(self):
    if not self.threshold > 0:
      raise ValueError(f"ternary threshold must be > 0, got {self.threshold!r}")
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("ste", self.ste, STES)


@dataclasses.dataclass(frozen=True)
class FP8Format:
  """fp8 fake quant: dtype 'e4m3' or 'e5m2'; scale = amax * 2^margin / fp8_max (rounded up to a
  power of two if pow2); scaling 'current' or 'delayed' (history of `history_length` amaxes)."""

  dtype: str = "e4m3"
  scaling: str = "current"
  granularity: str = "per_tensor"
  margin: int = 0
  pow2: bool = False
  history_length: int = 16
  ste: str = "identity"

  def __post_init__(self):
    check_choice("fp8 format", self.dtype, tuple(fp8.FP8_DTYPES))
    check_choice("fp8 scaling", self.scaling, fp8.SCALINGS)
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("ste", self.ste, STES)
    if not isinstance(self.history_length, int) or self.history_length < 1:
      raise ValueError(f"history_length must be a positive integer, got {self.history_length!r}")
    if self.scaling == "delayed" and self.granularity != "per_tensor":
      raise ValueError("fp8 scaling='delayed' keeps one amax history per tensor: granularity must "
                       f"be 'per_tensor', got {self.granularity!r}")

  @property
  def delayed(self) -> bool:
    return self.scaling == "delayed"


Format = IntFormat | LSQFormat | BinaryFormat | TernaryFormat | FP8Format
OPERAND_FORMATS = (IntFormat, LSQFormat, BinaryFormat, TernaryFormat, FP8Format)
GRADIENT_FORMATS = (IntFormat, FP8Format)

ROLES = ("weight", "activation", "gradient")
QUANT_STATE = "quant_state"  # the Flax collection holding delayed-scaling states

INT8 = IntFormat(bits=8)
E4M3 = FP8Format(dtype="e4m3")
E5M2 = FP8Format(dtype="e5m2")


def _check_format(role: str, fmt: Any, valid: tuple[type, ...]) -> None:
  if fmt is not None and not isinstance(fmt, valid):
    names = ", ".join(t.__name__ for t in valid)
    raise ValueError(f"{role} format must be None or one of {names}; got {fmt!r}")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """Formats of one op's weight, activation (input) and gradient (output cotangent); None keeps
  that tensor in float. Gradient formats: IntFormat (DoReFa-style low-bit gradients, Zhou et al.
  2016; use rounding='stochastic' for their unbiased noise) or FP8Format (e5m2 backward), both
  per_tensor."""

  weight: Format | None = None
  activation: Format | None = None
  gradient: IntFormat | FP8Format | None = None

  def __post_init__(self):
    _check_format("weight", self.weight, OPERAND_FORMATS)
    _check_format("activation", self.activation, OPERAND_FORMATS)
    _check_format("gradient", self.gradient, GRADIENT_FORMATS)
    if self.gradient is not None and self.gradient.granularity != "per_tensor":
      raise ValueError(f"gradient granularity must be 'per_tensor'; got "
                       f"{self.gradient.granularity!r}")

  @property
  def stochastic(self) -> bool:
    """Whether any format rounds stochastically (the op then needs rng=...)."""
    return any(isinstance(f, IntFormat) and f.rounding == "stochastic"
               for f in (self.weight, self.activation, self.gradient))

  @property
  def delayed_roles(self) -> tuple[str, ...]:
    """Roles ('weight', 'activation', 'gradient') whose format is fp8 with delayed scaling: each
    needs a state (fp8.init_delayed_state) in the op's quant_state= argument."""
    return tuple(r for r in ROLES
                 if isinstance(getattr(self, r), FP8Format) and getattr(self, r).delayed)

  @property
  def lsq_roles(self) -> tuple[str, ...]:
    """Roles ('weight', 'activation') quantized with LSQ: each needs a learned step."""
    return tuple(r for r in ROLES[:2] if isinstance(getattr(self, r), LSQFormat))


def quantize_operand(x: jax.Array, fmt: Format | None, contracting: Sequence[int], *,
                     key: jax.Array | None = None, step: jax.Array | None = None,
                     state: dict | None = None) -> jax.Array:
  """Fake-quantizes one operand of a contraction: per_tensor scales reduce over every axis,
  per_channel / per_token ones over `contracting` (see the module docstring). `step`: the LSQ
  step; `state`: the fp8 delayed-scaling state {"history", "probe"}."""
  if fmt is None:
    return x
  contracting = tuple(sorted({a % x.ndim for a in contracting})) if x.ndim else ()
  free = tuple(a for a in range(x.ndim) if a not in contracting)
  if isinstance(fmt, LSQFormat):
    if step is None:
      raise ValueError("LSQFormat needs its learned step: pass lhs_step= / rhs_step= to the "
                       "quantized op (the layer owns the step parameter)")
    return qz.lsq_fake_quant(x, step, bits=fmt.bits, signed=fmt.signed)
  # Granularity as seen by the standalone quantizers: per_channel over the free axes.
  gran = "per_tensor" if fmt.granularity == "per_tensor" else "per_channel"
  if isinstance(fmt, IntFormat):
    return qz.int_fake_quant(x, bits=fmt.bits, symmetric=fmt.symmetric, granularity=gran,
                             axis=free, rounding=fmt.rounding, ste=fmt.ste, key=key)
  if isinstance(fmt, BinaryFormat):
    return qz.binary_fake_quant(x, scaled=fmt.scaled, granularity=gran, axis=free, ste=fmt.ste)
  if isinstance(fmt, TernaryFormat):
    return qz.ternary_fake_quant(x, threshold=fmt.threshold, granularity=gran, axis=free,
                                 ste=fmt.ste)
  if isinstance(fmt, FP8Format):
    if fmt.delayed:
      if state is None:
        raise ValueError("fp8 scaling='delayed' needs this tensor's amax-history state: pass "
                         "quant_state={role: fp8.init_delayed_state(H)} (built on init_history) "
                         "to the quantized op; jaxlab Dense / Conv keep it in the 'quant_state' "
                         "collection")
      return fp8.fp8_fake_quant_delayed(x, state, fmt.dtype, margin=fmt.margin, pow2=fmt.pow2,
                                        ste=fmt.ste)
    return fp8.fp8_fake_quant_current(x, fmt.dtype, granularity=gran, axis=free,
                                      margin=fmt.margin, pow2=fmt.pow2, ste=fmt.ste)
  valid = ", ".join(t.__name__ for t in OPERAND_FORMATS)
  raise ValueError(f"unknown format {fmt!r}; valid: {valid}")


def _with_quantized_cotangent(op: Callable, fmt: Format) -> Callable:
  """op(lhs, rhs) whose backward quantizes the output cotangent with `fmt` before the two
  backward products (the transposed ops of `op`)."""

  @jax.custom_vjp
  def f(lhs, rhs, key):
    del key
    return op(lhs, rhs)

  def fwd(lhs, rhs, key):
    out, vjp = jax.vjp(op, lhs, rhs)
    return out, (vjp, key)

  def bwd(residuals, g):
    vjp, key = residuals
    g = quantize_operand(g, fmt, range(g.ndim), key=key)
    return (*vjp(g), None)

  f.defvjp(fwd, bwd)
  return f


def _split_rng(config: "QuantConfig", rng: jax.Array | None):
  if rng is None:
    if config.stochastic:
      raise ValueError("this QuantConfig rounds stochastically: pass rng=<PRNG key> to the op")
    return None, None, None
  return tuple(jax.random.split(rng, 3))


def _check_quant_state(config: "QuantConfig", quant_state: dict | None) -> dict:
  quant_state = quant_state or {}
  missing = [r for r in config.delayed_roles if r not in quant_state]
  if missing:
    raise ValueError(f"fp8 scaling='delayed' for {', '.join(missing)}: pass quant_state="
                     "{role: fp8.init_delayed_state(H), ...} (histories built on init_history) "
                     f"with the roles {', '.join(config.delayed_roles)} to the quantized op")
  return quant_state


def _quantized(config: "QuantConfig", op: Callable, lhs: jax.Array, rhs: jax.Array,
               lhs_contracting: Sequence[int], rhs_contracting: Sequence[int], weight_operand: str,
               rng, lhs_step, rhs_step, quant_state=None) -> jax.Array:
  lhs_role, rhs_role = ("activation", "weight") if weight_operand == "rhs" else ("weight",
                                                                                "activation")
  states = _check_quant_state(config, quant_state)
  k_lhs, k_rhs, k_grad = _split_rng(config, rng)
  lhs = quantize_operand(lhs, getattr(config, lhs_role), lhs_contracting, key=k_lhs,
                         step=lhs_step, state=states.get(lhs_role))
  rhs = quantize_operand(rhs, getattr(config, rhs_role), rhs_contracting, key=k_rhs,
                         step=rhs_step, state=states.get(rhs_role))
  grad = config.gradient
  if grad is None:
    return op(lhs, rhs)
  if isinstance(grad, FP8Format) and grad.delayed:
    return fp8.quantize_cotangent_delayed(op(lhs, rhs), states["gradient"], grad.dtype,
                                          grad.margin, grad.pow2)
  return _with_quantized_cotangent(op, grad)(lhs, rhs, k_grad)


def _check_weight_operand(weight_operand: str) -> None:
  check_choice("weight_operand", weight_operand, ("lhs", "rhs"))


def quantized_dot_general(config: QuantConfig, *, weight_operand: str = "rhs") -> Callable:
  """A function with `jax.lax.dot_general`'s signature that fake-quantizes the activation and
  weight operands with `config` in the forward pass and, if config.gradient is set, the output
  cotangent before the two backward matmuls (custom_vjp).

  weight_operand: which operand is the weight ('rhs': x @ W, the default; 'lhs': W^T x as in a
  feature-major Dense). Extra keyword-only arguments: rng (a PRNG key, required when a format
  rounds stochastically), lhs_step / rhs_step (LSQ steps) and quant_state ({'weight' |
  'activation' | 'gradient': fp8.init_delayed_state(H)} for the delayed-scaling fp8 formats).
  """
  _check_weight_operand(weight_operand)

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                  out_sharding=None, rng=None, lhs_step=None, rhs_step=None, quant_state=None):
    (lc, rc), _ = dimension_numbers
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    op = functools.partial(jax.lax.dot_general, dimension_numbers=dimension_numbers,
                           precision=precision, preferred_element_type=preferred_element_type,
                           **kw)
    return _quantized(config, op, lhs, rhs, lc, rc, weight_operand, rng, lhs_step, rhs_step,
                      quant_state)

  return dot_general


def quantized_conv_general_dilated(config: QuantConfig) -> Callable:
  """A function with `jax.lax.conv_general_dilated`'s signature, quantized like
  `quantized_dot_general` (lhs = activations, rhs = kernel); the kernel's per_channel scales are
  per output feature, the activations' per_token scales per pixel."""

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None, *,
                           out_sharding=None, rng=None, lhs_step=None, rhs_step=None,
                           quant_state=None):
    dn = jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    op = functools.partial(
        jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dn,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type, **kw)
    lhs_contracting = (dn.lhs_spec[1],)  # the input-feature axis
    rhs_contracting = tuple(dn.rhs_spec[1:])  # input-feature and spatial axes
    return _quantized(config, op, lhs, rhs, lhs_contracting, rhs_contracting, "rhs", rng,
                      lhs_step, rhs_step, quant_state)

  return conv_general_dilated
