"""QuantConfig (which format the weights, activations and gradients of one op use) and the
quantized `dot_general` / `conv_general_dilated` built from it.

Formats: the registered subclasses of `jaxlab.quant.formats.Format` (IntFormat, LSQFormat,
BinaryFormat, TernaryFormat, FP8Format), each owning its fake quant and its state.

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

from jaxlab.quant.formats import FORMATS, Format, quantize_operand
from jaxlab.quant.quantizers import check_choice

ROLES = ("weight", "activation", "gradient")


def _check_format(role: str, fmt: Any, gradient: bool = False) -> None:
  valid = [name for name, cls in FORMATS.items() if cls.gradient_ok or not gradient]
  if fmt is not None and not (isinstance(fmt, Format) and (fmt.gradient_ok or not gradient)):
    raise ValueError(f"{role} format must be None or one of {', '.join(valid)}; got {fmt!r}")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """Formats of one op's weight, activation (input) and gradient (output cotangent); None keeps
  that tensor in float. Gradient formats: those with `gradient_ok` (IntFormat, DoReFa-style
  low-bit gradients, Zhou et al. 2016, rounding='stochastic' for their unbiased noise; FP8Format,
  e5m2 backward), per_tensor."""

  weight: Format | None = None
  activation: Format | None = None
  gradient: Format | None = None

  def __post_init__(self):
    _check_format("weight", self.weight)
    _check_format("activation", self.activation)
    _check_format("gradient", self.gradient, gradient=True)
    if self.gradient is not None and self.gradient.granularity != "per_tensor":
      raise ValueError(f"gradient granularity must be 'per_tensor'; got "
                       f"{self.gradient.granularity!r}")

  @property
  def stochastic(self) -> bool:
    """Whether any format rounds stochastically (the op then needs rng=...)."""
    return any(f is not None and f.stochastic for f in (self.weight, self.activation,
                                                        self.gradient))


def _split_rng(config: "QuantConfig", rng: jax.Array | None):
  if rng is None:
    if config.stochastic:
      raise ValueError("this QuantConfig rounds stochastically: pass rng=<PRNG key> to the op")
    return None, None, None
  return tuple(jax.random.split(rng, 3))


def _quantized(config: "QuantConfig", op: Callable, lhs: jax.Array, rhs: jax.Array,
               lhs_contracting: Sequence[int], rhs_contracting: Sequence[int], weight_operand: str,
               rng, quant_state=None) -> jax.Array:
  lhs_role, rhs_role = ("activation", "weight") if weight_operand == "rhs" else ("weight",
                                                                                "activation")
  states = quant_state or {}
  k_lhs, k_rhs, k_grad = _split_rng(config, rng)
  lhs = quantize_operand(lhs, getattr(config, lhs_role), lhs_contracting, key=k_lhs,
                         state=states.get(lhs_role))
  rhs = quantize_operand(rhs, getattr(config, rhs_role), rhs_contracting, key=k_rhs,
                         state=states.get(rhs_role))
  if config.gradient is None:
    return op(lhs, rhs)
  return config.gradient.quantize_cotangent(op, lhs, rhs, key=k_grad,
                                            state=states.get("gradient"))


def _check_weight_operand(weight_operand: str) -> None:
  check_choice("weight_operand", weight_operand, ("lhs", "rhs"))


def quantized_dot_general(config: QuantConfig, *, weight_operand: str = "rhs") -> Callable:
  """A function with `jax.lax.dot_general`'s signature that fake-quantizes the activation and
  weight operands with `config` in the forward pass and, if config.gradient is set, the output
  cotangent before the two backward matmuls (custom_vjp).

  weight_operand: which operand is the weight ('rhs': x @ W, the default; 'lhs': W^T x as in a
  feature-major Dense). Extra keyword-only arguments: rng (a PRNG key, required when a format
  rounds stochastically) and quant_state ({'weight' | 'activation' | 'gradient': the state of
  that tensor's format}: an LSQ step, an fp8 delayed-scaling fp8.init_delayed_state(H)).
  """
  _check_weight_operand(weight_operand)

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                  out_sharding=None, rng=None, quant_state=None):
    (lc, rc), _ = dimension_numbers
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    op = functools.partial(jax.lax.dot_general, dimension_numbers=dimension_numbers,
                           precision=precision, preferred_element_type=preferred_element_type,
                           **kw)
    return _quantized(config, op, lhs, rhs, lc, rc, weight_operand, rng, quant_state)

  return dot_general


def quantized_conv_general_dilated(config: QuantConfig) -> Callable:
  """A function with `jax.lax.conv_general_dilated`'s signature, quantized like
  `quantized_dot_general` (lhs = activations, rhs = kernel); the kernel's per_channel scales are
  per output feature, the activations' per_token scales per pixel."""

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None, *,
                           out_sharding=None, rng=None, quant_state=None):
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
                      quant_state)

  return conv_general_dilated
