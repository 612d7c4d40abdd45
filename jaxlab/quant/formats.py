"""Quantizer formats: each is one frozen dataclass (hashable, so a policy can sit in a Flax
module's fields) that owns its behaviour:
  * `quantize(x, free, key=, state=)`: the fake quant, forward and STE (`jaxlab.quant.quantizers`,
    `jaxlab.quant.fp8`); `free` are the operand's axes the op does not contract, over which
    per_channel / per_token scales vary (see `jaxlab.quant.config`);
  * `quantize_cotangent(op, lhs, rhs, key=, state=)`: op(lhs, rhs) whose output cotangent is
    quantized (formats with `gradient_ok`; the default quantizes it with `quantize`);
  * `declare_state(module, role, value)`: the state the format needs inside a Flax module
    (None: stateless), created on first use: LSQ's learned step (a param), fp8 delayed scaling's
    amax history (collection QUANT_STATE);
  * `next_state(state, cotangent)`: that state after one train step, from the gradient of the
    loss with respect to it (fp8 delayed: this step's amax enters the history).
Subclassing `Format` registers the class in `FORMATS`, which `QuantConfig` accepts.
"""

import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.param.meta import ParamMeta
from jaxlab.param.roles import BIAS
from jaxlab.quant import fp8, quantizers as qz
from jaxlab.quant.quantizers import GRANULARITIES, ROUNDINGS, STES, check_bits, check_choice

QUANT_STATE = "quant_state"  # the Flax collection holding state other than params (fp8 delayed)
FORMATS: dict[str, type["Format"]] = {}  # name -> class, in definition order


class Format:
  """Base of every format: stateless, operand-only, deterministic unless a subclass says so."""

  gradient_ok: ClassVar[bool] = False  # may quantize an output cotangent (QuantConfig.gradient)
  data_init: ClassVar[bool] = False  # its state initialises from the activations seen at init

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    FORMATS[cls.__name__] = cls

  @property
  def stochastic(self) -> bool:
    """Whether it rounds stochastically (the op then needs rng=...)."""
    return False

  def _granularity(self) -> str:
    """Granularity for the standalone quantizers: per_channel / per_token scales vary over the
    operand's free axes, which `quantize` passes as their `axis`."""
    return "per_tensor" if self.granularity == "per_tensor" else "per_channel"

  def quantize(self, x: jax.Array, free: tuple[int, ...], *, key: jax.Array | None = None,
               state: Any = None) -> jax.Array:
    raise NotImplementedError

  def quantize_cotangent(self, op: Callable, lhs: jax.Array, rhs: jax.Array, *,
                         key: jax.Array | None = None, state: Any = None) -> jax.Array:
    """op(lhs, rhs) whose backward quantizes the output cotangent (per tensor) before the two
    backward products (the transposed ops of `op`)."""
    del state

    @jax.custom_vjp
    def f(lhs, rhs, key):
      del key
      return op(lhs, rhs)

    def fwd(lhs, rhs, key):
      out, vjp = jax.vjp(op, lhs, rhs)
      return out, (vjp, key)

    def bwd(residuals, g):
      vjp, key = residuals
      return (*vjp(self.quantize(g, (), key=key)), None)

    f.defvjp(fwd, bwd)
    return f(lhs, rhs, key)

  def declare_state(self, module: nn.Module, role: str, value: jax.Array | None) -> Any:
    """The state of `role`'s tensor (`value`: kernel, input, or None for the gradient) in
    `module`, declared on first use; None: the format needs none."""
    del module, role, value
    return None

  def next_state(self, state: Any, cotangent: Any) -> Any:
    """The state after one step, given d loss / d state; unchanged by default."""
    del cotangent
    return state


@dataclasses.dataclass(frozen=True)
class IntFormat(Format):
  """Integer fake quant; scale from the tensor (max|x| symmetric, min/max affine); DoReFa-style
  low-bit gradients as a gradient format (Zhou et al. 2016; rounding='stochastic')."""

  gradient_ok: ClassVar[bool] = True
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

  @property
  def stochastic(self) -> bool:
    return self.rounding == "stochastic"

  def quantize(self, x, free, *, key=None, state=None):
    return qz.int_fake_quant(x, bits=self.bits, symmetric=self.symmetric,
                             granularity=self._granularity(), axis=free, rounding=self.rounding,
                             ste=self.ste, key=key)


@dataclasses.dataclass(frozen=True)
class LSQFormat(Format):
  """LSQ (Esser et al. 2020) with a learned per-tensor step: in a jaxlab layer the param
  '<role>_step' (role BIAS, fan 1), initialised to 2 mean|v| / sqrt(Q_P) of the kernel / the
  input seen at init (mean|v| = 1 if that input is all zeros, e.g. a dummy example)."""

  data_init: ClassVar[bool] = True
  bits: int = 4
  signed: bool = True

  def __post_init__(self):
    check_bits(self.bits)

  def quantize(self, x, free, *, key=None, state=None):
    if state is None:
      raise ValueError("LSQFormat needs its learned step: pass quant_state={role: step} to the "
                       "quantized op (the layer owns the step parameter)")
    return qz.lsq_fake_quant(x, state, bits=self.bits, signed=self.signed)

  def declare_state(self, module, role, value):
    def init(key, shape):
      del key, shape
      step = qz.lsq_init_step(value, self.bits, self.signed, default_mean_abs=1.0)
      return ParamMeta(jnp.asarray(step, jnp.float32).astype(module.ctx.param_dtype), names=(),
                       role=BIAS, fan_in=1, fan_out=1)
    return module.param(f"{role}_step", init, ())


@dataclasses.dataclass(frozen=True)
class BinaryFormat(Format):
  """scaled=False: BinaryConnect sign(W); scaled=True: XNOR-Net mean|W| * sign(W)."""

  scaled: bool = True
  granularity: str = "per_channel"
  ste: str = "clipped"

  def __post_init__(self):
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("ste", self.ste, STES)

  def quantize(self, x, free, *, key=None, state=None):
    return qz.binary_fake_quant(x, scaled=self.scaled, granularity=self._granularity(),
                                axis=free, ste=self.ste)


@dataclasses.dataclass(frozen=True)
class TernaryFormat(Format):
  """TWN: alpha * {-1, 0, +1} with threshold `threshold` * mean|W|."""

  threshold: float = 0.7
  granularity: str = "per_channel"
  ste: str = "identity"

  def __post_init__(self):
    if not self.threshold > 0:
      raise ValueError(f"ternary threshold must be > 0, got {self.threshold!r}")
    check_choice("granularity", self.granularity, GRANULARITIES)
    check_choice("ste", self.ste, STES)

  def quantize(self, x, free, *, key=None, state=None):
    return qz.ternary_fake_quant(x, threshold=self.threshold, granularity=self._granularity(),
                                 axis=free, ste=self.ste)


@dataclasses.dataclass(frozen=True)
class FP8Format(Format):
  """fp8 fake quant (Micikevicius et al. 2022): dtype 'e4m3' or 'e5m2'; scale = amax * 2^margin
  / fp8_max (rounded up to a power of two if pow2); scaling 'current' or 'delayed' (history of
  `history_length` amaxes, per tensor, in a jaxlab layer's QUANT_STATE collection as
  {'history', 'probe'}: see `jaxlab.quant.fp8`)."""

  gradient_ok: ClassVar[bool] = True
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
    if self.delayed and self.granularity != "per_tensor":
      raise ValueError("fp8 scaling='delayed' keeps one amax history per tensor: granularity must "
                       f"be 'per_tensor', got {self.granularity!r}")

  @property
  def delayed(self) -> bool:
    return self.scaling == "delayed"

  def _check_state(self, state):
    if state is None:
      raise ValueError("fp8 scaling='delayed' needs this tensor's amax-history state: pass "
                       "quant_state={role: fp8.init_delayed_state(H)} (built on init_history) "
                       "to the quantized op; jaxlab Dense / Conv keep it in the 'quant_state' "
                       "collection")

  def quantize(self, x, free, *, key=None, state=None):
    if self.delayed:
      self._check_state(state)
      return fp8.fp8_fake_quant_delayed(x, state, self.dtype, margin=self.margin, pow2=self.pow2,
                                        ste=self.ste)
    return fp8.fp8_fake_quant_current(x, self.dtype, granularity=self._granularity(), axis=free,
                                      margin=self.margin, pow2=self.pow2, ste=self.ste)

  def quantize_cotangent(self, op, lhs, rhs, *, key=None, state=None):
    if not self.delayed:
      return super().quantize_cotangent(op, lhs, rhs, key=key)
    self._check_state(state)
    return fp8.quantize_cotangent_delayed(op(lhs, rhs), state, self.dtype, self.margin,
                                          self.pow2)

  def declare_state(self, module, role, value):
    if not self.delayed:
      return None
    if not module.is_initializing() and not module.has_variable(QUANT_STATE, role):
      raise ValueError(
          f"layer {'/'.join(module.scope.path)!r} uses fp8 scaling='delayed' (policy "
          f"{module.ctx.quant.name!r}) and needs its amax histories: apply the model with "
          f"{{'params': ..., {QUANT_STATE!r}: ...}} (the train state keeps them in "
          f"TrainState.extra[{QUANT_STATE!r}])")
    return module.variable(QUANT_STATE, role, fp8.init_delayed_state, self.history_length).value

  def next_state(self, state, cotangent):
    """This step's amax (the probe's cotangent) enters the history; the probe stays 0."""
    return {"history": fp8.update_history(state["history"], cotangent["probe"]),
            "probe": state["probe"]}


def quantize_operand(x: jax.Array, fmt: Format | None, contracting: Sequence[int], *,
                     key: jax.Array | None = None, state: Any = None) -> jax.Array:
  """Fake-quantizes one operand of a contraction with `fmt` (None: unchanged): per_tensor scales
  reduce over every axis, per_channel / per_token ones over `contracting`. `state`: the
  format's state for this tensor (LSQ step, fp8 delayed {'history', 'probe'})."""
  if fmt is None:
    return x
  contracting = tuple(sorted({a % x.ndim for a in contracting})) if x.ndim else ()
  free = tuple(a for a in range(x.ndim) if a not in contracting)
  return fmt.quantize(x, free, key=key, state=state)
