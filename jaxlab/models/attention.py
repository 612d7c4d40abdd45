"""Multi-head self-attention layer (fused qkv projection, optional RoPE and grouped-query heads)
built on jaxlab.models.layers.Dense; the attention core is pallas_kernels.attention."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels
from jaxlab.depth.init_schemes import KernelInit
from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import Dense, split_last
from jaxlab.models.rope import apply_rope
from jaxlab.param.roles import HIDDEN
from jaxlab.param.unit_scaling import scale_bwd, scale_fwd
from jaxlab.sharding import tensor_parallel


def scale_columns(init: KernelInit | None, start: int, factor: float) -> KernelInit:
  """A kernel_init drawing like `init` (default N(0, std^2)) with columns [start:] x factor."""

  def fn(key, shape, std):
    w = std * jax.random.normal(key, shape, jnp.float32) if init is None else init(key, shape, std)
    return w.at[..., start:].multiply(factor)

  return fn


ATTENTION_IMPLEMENTATIONS = ("auto",) + pallas_kernels.IMPLEMENTATIONS


def attention_implementation(name: str) -> str | None:
  """config.model.attention_impl -> pallas_kernels.attention's `implementation`."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise UserError(f"config.model.attention_impl={name!r}; valid: "
                    f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
  return None if name == "auto" else name


class Attention(nn.Module):
  """Multi-head (optionally grouped-query) self-attention with fused qkv projection.

  qkv: Dense(embed -> (heads + 2 kv_heads) * head_dim), out: Dense(heads * head_dim -> embed),
  both HIDDEN; logits scaled by parametrization.attention_scale(head_dim); optional RoPE.
  Init hooks (defaults leave the init unchanged): init_scale multiplies every kernel's init std,
  value_init_scale further the value columns of qkv and the out kernel (DeepNorm's beta), and
  kernel_inits = (qkv_init, out_init) replaces their normal draws (mimetic init).
  The attention itself is pallas_kernels.attention; `implementation` is its dispatch ("auto" =
  None: Pallas on GPU/TPU, the dense XLA path on CPU up to its size limit, then xla_chunked).
  Tensor parallelism (a 'model' mesh axis of M > 1 devices in context, M dividing heads and
  kv_heads; jaxlab.sharding.tensor_parallel): qkv is computed from a head-major view of its kernel
  so each model shard holds whole heads of q, k and v (Megatron's layout; the stored kernel keeps
  its [q | k | v] order) and out is row-parallel. Without such a mesh nothing changes.
  """

  num_heads: int
  head_dim: int | None = None
  num_kv_heads: int | None = None
  causal: bool = False
  rope: bool = False
  rope_base: float = 10000.0
  use_bias: bool = True
  ctx: LayerContext = DEFAULT
  init_scale: float = 1.0
  value_init_scale: float = 1.0
  kernel_inits: tuple[KernelInit, KernelInit] | None = None
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    B, L, D = x_BLD.shape
    H = self.num_heads
    K = self.num_kv_heads or H
    if self.head_dim is None and D % H:
      raise UserError(f"width {D} not divisible by num_heads {H} (config.model.num_heads); set "
                      "config.model.head_dim")
    Dh = self.head_dim or D // H
    qkv_init, out_init = self.kernel_inits or (None, None)
    if self.value_init_scale != 1.0:
      qkv_init = scale_columns(qkv_init, (H + K) * Dh, self.value_init_scale)
    sizes, M = (H * Dh, K * Dh, K * Dh), tensor_parallel.model_shards()
    tp = M > 1 and H % M == 0 and K % M == 0  # Megatron: whole heads per 'model' shard
    qkv = Dense((H + 2 * K) * Dh, role=HIDDEN, use_bias=self.use_bias,
                kernel_axes=("embed", "heads"), init_scale=self.init_scale, kernel_init=qkv_init,
                column_layout=partial(tensor_parallel.head_major, sizes=sizes, shards=M)
                if tp else None, name="qkv", ctx=self.ctx)(x_BLD)
    if tp:
      q, k, v = tensor_parallel.split_head_major(qkv, sizes, M)
    else:
      q, k, v = split_last(qkv, (H * Dh, (H + K) * Dh))
    q_BLHD, k_BLKD, v_BLKD = q.reshape(B, L, H, Dh), k.reshape(B, L, K, Dh), v.reshape(B, L, K, Dh)
    if self.rope:
      positions = np.arange(L) if positions is None else positions  # constant sin/cos tables
      q_BLHD = apply_rope(q_BLHD, positions, self.rope_base)
      k_BLKD = apply_rope(k_BLKD, positions, self.rope_base)
    p = self.ctx.parametrization
    io_scale = p.attention_output_scale(L, Dh, self.causal)
    if io_scale != 1.0:  # u-muP: unit-scaled attention output, q/k/v cotangents to match
      q_BLHD, k_BLKD, v_BLKD = (scale_bwd(t, io_scale) for t in (q_BLHD, k_BLKD, v_BLKD))
    out_BLHD = pallas_kernels.attention(
        q_BLHD, k_BLKD, v_BLKD, scale=p.attention_scale(Dh),
        causal=self.causal, mask=mask, implementation=attention_implementation(
            self.implementation))
    if io_scale != 1.0:
      out_BLHD = scale_fwd(out_BLHD, io_scale)
    out_BLHD = tensor_parallel.shard_dim(out_BLHD, 2)  # row-parallel out projection
    return Dense(D, role=HIDDEN, use_bias=self.use_bias, kernel_axes=("heads", "embed"),
                 init_scale=self.init_scale * self.value_init_scale, kernel_init=out_init,
                 name="out", ctx=self.ctx)(out_BLHD.reshape(B, L, H * Dh))
