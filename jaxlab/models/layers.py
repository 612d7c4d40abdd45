"""Layers every jaxlab model is built from.

Contract (what later parametrization / quantization work relies on):
  * every layer takes one `ctx` (jaxlab.models.context.LayerContext: parametrization,
    quantization policy, compute dtype, param dtype); inputs and weights are cast to ctx.dtype;
  * every parameter is created by `make_param` in ctx.param_dtype, boxed in `ParamMeta` with
    logical axis names (from `LOGICAL_AXES`), a role (`jaxlab.param.roles`), fan-in and fan-out;
  * weights init ~ N(0, parametrization.init_std(role, fan_in, fan_out)), biases 0, norm gains 1;
    a layer's `init_scale` multiplies that std and a `kernel_init(key, shape, std)` replaces the
    normal draw (per-layer init schemes, jaxlab.depth.init_schemes); the defaults (1.0, None)
    leave the init unchanged;
  * the output of every weight op is multiplied by parametrization.forward_multiplier(role, ...)
    (skipped when it is exactly 1.0, so SP traces to the plain op);
  * matmuls use `quant.dot_general(path, role)`, convolutions
    `quant.conv_general_dilated(path, role)`, where path is the module path '/'.join(scope.path),
    e.g. 'block_0/attn/qkv', and role the weight's. Dense and Conv also
    own the state their QuantConfig's formats declare (`jaxlab.quant.quant_inputs`): LSQ steps
    as params and fp8 delayed-scaling histories in the 'quant_state' collection.

Fan conventions: a Dense/readout kernel [fan_in, fan_out]; a Conv kernel has
fan_in = prod(kernel_size) * in_channels and fan_out = out_channels (the channel count is what
grows with width; the receptive field is a constant factor); an embedding table
[num_embeddings, features] has fan_in = num_embeddings; biases are weights reading a constant 1
(fan_in = 1, fan_out = features, as in Tensor Programs V, Table 3); norm gains have
fan_in = fan_out = features.
"""

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.depth.init_schemes import KernelInit, scaled_standardize
from jaxlab.errors import UserError
from jaxlab.models import feature_major
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.param.base import OpScales, Parametrization
from jaxlab.param.meta import ParamMeta
from jaxlab.param.roles import BIAS, HIDDEN, INPUT, NORM, READOUT, check
from jaxlab.param.unit_scaling import scale_bwd, scale_fwd, scaled_op
from jaxlab.quant.layer_state import quant_inputs
from jaxlab.quant.policy import module_path
from jaxlab.sharding import tensor_parallel

# Logical axis vocabulary (mapped to mesh axes by sharding rules):
#   input     raw data features (flattened pixels) read by an MLP's first Dense
#   embed     model width: residual stream / d_model / ViT dim / hidden width entering a Dense
#   mlp       hidden width produced by a Dense (transformer MLP expansion, MLP-model widths)
#   heads     fused attention heads * head_dim (q/k/v packed: (heads + 2 kv_heads) * head_dim;
#             under tensor parallelism Attention reads it head-major, see there)
#   vocab     token vocabulary          classes   classifier outputs
#   position  positions of a learned position table
#   kernel_h, kernel_w, conv_in, conv_out   convolution kernel axes (HWIO)
LOGICAL_AXES = ("input", "embed", "mlp", "heads", "vocab", "classes", "position", "kernel_h",
                "kernel_w", "conv_in", "conv_out")


def make_param(module: nn.Module, name: str, shape: Sequence[int], *, names: Sequence[str],
               role: str, fan_in: int, fan_out: int, ctx: LayerContext,
               init_scale: float = 1.0, init: KernelInit | None = None) -> jax.Array:
  """Declares `module.<name>` boxed in ParamMeta; returns the (unboxed) value, in
  ctx.param_dtype (drawn in f32).

  init_scale multiplies the parametrization's init std; `init(key, shape, std)` replaces the
  default value (N(0, std^2) for weights, 0 for biases, 1 for gains) whatever the role.
  """
  check(role)
  names, shape = tuple(names), tuple(shape)
  if len(names) != len(shape):
    raise ValueError(f"{name}: {len(names)} axis names {names} for shape {shape}")
  unknown = [n for n in names if n not in LOGICAL_AXES]
  if unknown:
    raise ValueError(f"{name}: unknown logical axes {unknown}; valid: {LOGICAL_AXES}")

  def init_fn(key, shape):
    std = ctx.parametrization.init_std(role, fan_in, fan_out)
    if init_scale != 1.0:
      std = std * init_scale
    if init is not None:
      value = jnp.asarray(init(key, shape, std), jnp.float32)
    elif role == BIAS:
      value = jnp.zeros(shape, jnp.float32)
    elif role == NORM:
      value = jnp.ones(shape, jnp.float32)
    else:
      value = std * jax.random.normal(key, shape, jnp.float32)
    return ParamMeta(value.astype(ctx.param_dtype), names=names, role=role, fan_in=fan_in,
                     fan_out=fan_out)

  return module.param(name, init_fn, shape)


def scale(x: jax.Array, multiplier: float) -> jax.Array:
  """x * multiplier, or x itself when the multiplier is exactly 1.0 (SP)."""
  if isinstance(multiplier, (int, float)) and multiplier == 1.0:
    return x
  return x * jnp.asarray(multiplier, x.dtype)


def scale_param(w: jax.Array, s: OpScales) -> jax.Array:
  """s.out * w for a parameter used elementwise (bias, gain, looked-up table), its cotangent
  multiplied by s.grad_param; plain `scale(w, s.out)` when the two agree."""
  if s.out == s.grad_param:
    return scale(w, s.out)
  return scale_fwd(scale_bwd(w, s.grad_param), s.out)


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf form (ViT, BERT)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2 form
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise UserError(f"unknown activation {name!r} (config.model.activation); valid: "
                    f"{', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def apply_activation(name: str, x: jax.Array, parametrization: Parametrization) -> jax.Array:
  """activation(name)(x) times the parametrization's activation scale (1 except u-muP)."""
  f = activation(name)
  return scale(f(x), parametrization.activation_scale(f))


class Dense(nn.Module):
  """y = m_W * (x @ W) + m_b * b with W [fan_in, features], fan_in = x.shape[-1].

  feature_major=True takes and returns transposed activations (x [fan_in, N] -> y [features, N])
  with the same kernel; FeedForward uses it (see there for why). init_scale / kernel_init: see
  `make_param`. column_layout: a function reordering the output features (last axis of kernel and
  bias) before use, so y comes in that order; the stored parameters keep theirs (Attention's
  head-major qkv under tensor parallelism, jaxlab.sharding.tensor_parallel); None: as stored.
  """

  features: int
  role: str = HIDDEN
  use_bias: bool = True
  kernel_axes: tuple[str, str] = ("embed", "mlp")
  feature_major: bool = False
  ctx: LayerContext = DEFAULT
  init_scale: float = 1.0
  kernel_init: KernelInit | None = None
  column_layout: Callable[[jax.Array], jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, dtype = self.ctx.parametrization, self.ctx.dtype
    fan_in = x.shape[0] if self.feature_major else x.shape[-1]
    layout = self.column_layout or (lambda w: w)
    kernel = layout(make_param(self, "kernel", (fan_in, self.features), names=self.kernel_axes,
                               role=self.role, fan_in=fan_in, fan_out=self.features,
                               ctx=self.ctx, init_scale=self.init_scale, init=self.kernel_init))
    weight_operand = "lhs" if self.feature_major else "rhs"
    dot_general = self.ctx.quant.dot_general(module_path(self), self.role,
                                             weight_operand=weight_operand)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    qkw = quant_inputs(self, x, kernel)
    if qkw:
      dot_general = functools.partial(dot_general, **qkw)
    if self.feature_major and dot_general is jax.lax.dot_general:  # y^T = W^T x^T
      op = lambda a, w: feature_major.matmul(w, a)  # noqa: E731  (fast GEMM on CPU)
    elif self.feature_major:
      op = lambda a, w: dot_general(w, a, (((0,), (0,)), ((), ())))  # noqa: E731
    else:
      op = lambda a, w: dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())))  # noqa: E731
    batch = x.size // fan_in
    y = scaled_op(x, kernel, op, *p.op_scales(self.role, fan_in, self.features, batch))
    if self.use_bias:
      bias = layout(make_param(self, "bias", (self.features,), names=self.kernel_axes[-1:],
                               role=BIAS, fan_in=1, fan_out=self.features, ctx=self.ctx))
      bias = scale_param(bias.astype(dtype), p.op_scales(BIAS, 1, self.features, batch))
      y = y + (bias.reshape((-1,) + (1,) * (y.ndim - 1)) if self.feature_major else bias)
    return y


class Readout(Dense):
  """The last weight (logits): a Dense with role READOUT."""

  role: str = READOUT
  kernel_axes: tuple[str, str] = ("embed", "classes")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nn.Module):
  """2-D convolution, NHWC inputs, HWIO kernel; fan_in = kh*kw*C_in, fan_out = features.

  standardize=True uses the scaled weight standardization of NF-ResNets (Brock et al. 2021,
  Eq. 5): W_hat = gain * (W - mean) / (std * sqrt(fan_in)) per output channel, with a learned
  `gain` [features] (role NORM, init 1; part of the weight, so it has no op scales of its own);
  see jaxlab.depth.init_schemes.scaled_standardize.
  init_scale multiplies the init std (see `make_param`).
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  role: str = HIDDEN
  use_bias: bool = True
  kernel_axes: tuple[str, str, str, str] = ("kernel_h", "kernel_w", "conv_in", "conv_out")
  ctx: LayerContext = DEFAULT
  init_scale: float = 1.0
  standardize: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    p, dtype = self.ctx.parametrization, self.ctx.dtype
    (kh, kw), c_in = _pair(self.kernel_size), x_BHWC.shape[-1]
    fan_in = kh * kw * c_in
    kernel = make_param(self, "kernel", (kh, kw, c_in, self.features), names=self.kernel_axes,
                        role=self.role, fan_in=fan_in, fan_out=self.features, ctx=self.ctx,
                        init_scale=self.init_scale)
    if self.standardize:
      gain = make_param(self, "gain", (self.features,), names=self.kernel_axes[-1:], role=NORM,
                        fan_in=self.features, fan_out=self.features, ctx=self.ctx)
      kernel = scaled_standardize(kernel, gain, p.init_std(self.role, fan_in, self.features))
    conv = self.ctx.quant.conv_general_dilated(module_path(self), self.role)
    x_BHWC, kernel = x_BHWC.astype(dtype), kernel.astype(dtype)
    op = functools.partial(conv, window_strides=_pair(self.strides), padding=self.padding,
                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           **quant_inputs(self, x_BHWC, kernel))
    batch = math.prod(jax.eval_shape(op, x_BHWC, kernel).shape[:-1])  # output positions
    y = scaled_op(x_BHWC, kernel, op, *p.op_scales(self.role, fan_in, self.features, batch))
    if self.use_bias:
      bias = make_param(self, "bias", (self.features,), names=self.kernel_axes[-1:], role=BIAS,
                        fan_in=1, fan_out=self.features, ctx=self.ctx)
      y = y + scale_param(bias.astype(dtype), p.op_scales(BIAS, 1, self.features, batch))
    return y


class Embed(nn.Module):
  """Lookup table [num_embeddings, features]; `attend` gives tied-readout logits x @ table.T."""

  num_embeddings: int
  features: int
  role: str = INPUT
  embedding_axes: tuple[str, str] = ("vocab", "embed")
  ctx: LayerContext = DEFAULT

  def setup(self):
    self.embedding = make_param(
        self, "embedding", (self.num_embeddings, self.features), names=self.embedding_axes,
        role=self.role, fan_in=self.num_embeddings, fan_out=self.features, ctx=self.ctx)

  def __call__(self, ids: jax.Array) -> jax.Array:
    s = self.ctx.parametrization.lookup_scales(self.num_embeddings, self.features, ids.size)
    if s.out == s.grad_param:
      x = jnp.take(self.embedding.astype(self.ctx.dtype), ids, axis=0)
      return scale(x, s.out)
    table = scale_bwd(self.embedding.astype(self.ctx.dtype), s.grad_param)
    return scale_fwd(jnp.take(table, ids, axis=0), s.out)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits x @ table.T, scaled as a READOUT with fan_in = features; quantized as the table's
    role (the tied readout follows the embedding)."""
    dot_general = self.ctx.quant.dot_general(module_path(self), self.role)
    op = lambda a, w: dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))  # noqa: E731
    s = self.ctx.parametrization.op_scales(READOUT, self.features, self.num_embeddings,
                                           x.size // self.features)
    dtype = self.ctx.dtype
    return scaled_op(x.astype(dtype), self.embedding.astype(dtype), op, *s)


class PositionEmbedding(nn.Module):
  """Learned absolute positions: table [max_len, features] (INPUT role, fan_in = max_len)."""

  max_len: int
  features: int
  ctx: LayerContext = DEFAULT

  @nn.compact
  def __call__(self, length: int, batch: int = 1) -> jax.Array:
    """The first `length` rows; `batch` = how many sequences they are added to (for u-muP's
    gradient scale)."""
    if length > self.max_len:
      raise ValueError(f"sequence length {length} > max_len {self.max_len}")
    table = make_param(self, "embedding", (self.max_len, self.features),
                       names=("position", "embed"), role=INPUT, fan_in=self.max_len,
                       fan_out=self.features, ctx=self.ctx)
    s = self.ctx.parametrization.lookup_scales(self.max_len, self.features, batch * self.max_len)
    return scale_param(table[:length].astype(self.ctx.dtype), s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split_last(x: jax.Array, points: tuple[int, ...]) -> tuple[jax.Array, ...]:
  """jnp.split along the last axis whose VJP concatenates the cotangents (autodiff would pad
  each one to full width and add them, several times slower on XLA:CPU)."""
  return tuple(jnp.split(x, points, axis=-1))


def _split_last_fwd(x, points):
  return split_last(x, points), None


def _split_last_bwd(points, _, cotangents):
  return (jnp.concatenate(cotangents, axis=-1),)


split_last.defvjp(_split_last_fwd, _split_last_bwd)


class FeedForward(nn.Module):
  """Dense(embed -> hidden) -> activation -> Dense(hidden -> embed), both HIDDEN.

  The hidden activations are kept feature-major ([hidden, tokens]): the weight gradients then
  contract over the minor (token) axis of a materialised array, and XLA:CPU no longer fuses the
  activation's backward into a transposing copy (measured: fwd+bwd of a d=256, 4x GELU block on
  4,096 tokens 189 ms -> 105 ms). Same parameters and numerics as the token-major form. Both
  products (unquantized) are `feature_major.matmul`, which keeps every forward and backward
  product in XLA:CPU's fast GEMM. init_scale multiplies both kernels' init std.
  """

  hidden: int
  activation: str = "gelu"
  use_bias: bool = True
  ctx: LayerContext = DEFAULT
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx, use_bias=self.use_bias, feature_major=True,
              init_scale=self.init_scale)
    d = x.shape[-1]
    xT = x.reshape(-1, d).T
    hT = Dense(self.hidden, kernel_axes=("embed", "mlp"), name="up", **kw)(xT)
    hT = tensor_parallel.shard_dim(hT, 0)  # Megatron: column-parallel up, row-parallel down
    hT = apply_activation(self.activation, hT, self.ctx.parametrization)
    yT = Dense(d, kernel_axes=("mlp", "embed"), name="down", **kw)(hT)
    return yT.T.reshape(x.shape[:-1] + (d,))


def num_params(params: Any) -> int:
  """Number of scalars in a (boxed or unboxed) params tree."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
  return int(sum(math.prod(x.shape) for x in leaves))
