"""pallas_kernels.fused_norm: LayerNorm / RMSNorm over the last axis, with optional LayerNorm
Scaling by 1/sqrt(layer_index) (Sun et al. 2025).

  "xla"              reference.py: plain jnp, float32 statistics.
  "pallas"           pallas.py: row-tiled forward and backward kernels compiled for GPU / TPU.
  "pallas_interpret" the same kernels in the Pallas interpreter (any backend; used by tests).
None picks "pallas" on GPU/TPU and "xla" elsewhere (and "xla", logged at warning level, when the
compiled kernels cannot run the call, e.g. a non-power-of-two feature dim on GPU). Invalid
arguments raise ValueError; so does an explicit "pallas" the kernels cannot run here (e.g. on
CPU), naming the values that can.
"""

import jax
import jax.numpy as jnp

from pallas_kernels._checks import positive_int, resolve_implementation, static_number
from pallas_kernels.fused_norm import pallas, reference

IMPLEMENTATIONS = ("pallas", "pallas_interpret", "xla")
DTYPES = (jnp.float32, jnp.bfloat16)
KINDS = reference.KINDS


def default_implementation() -> str:
  return "pallas" if pallas.target(False) in ("gpu", "tpu") else "xla"


def _check_vector(name: str, v, features: int):
  v = jnp.asarray(v)
  if v.shape != (features,):
    raise ValueError(f"{name} must have shape [features] = ({features},) (x's last axis); got "
                     f"{v.shape}")
  if v.dtype not in DTYPES:
    raise ValueError(f"{name} must be float32 or bfloat16; got {v.dtype}")
  return v


def fused_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None = None, *,
               kind: str = "layernorm", eps: float = 1e-6, layer_index: int | None = None,
               implementation: str | None = None, block_rows: int | None = None) -> jax.Array:
  """Normalises x over its last axis (reference.py's docstring has the formulas):

    layernorm: ((x - mean) / sqrt(var + eps) * scale + bias) / sqrt(layer_index)
    rmsnorm:   (x / sqrt(mean(x^2) + eps) * scale + bias) / sqrt(layer_index)

  Args:
    x: [..., features], float32 or bfloat16; statistics are float32 either way.
    scale: [features], float32 or bfloat16 (the norm gain).
    bias: None or [features] (float32 or bfloat16); optional for both kinds (rmsnorm is usually
      used without).
    kind: "layernorm" or "rmsnorm".
    eps: a static positive number added to the variance / mean square.
    layer_index: None, or the 1-based layer l >= 1 for LayerNorm Scaling (output * 1/sqrt(l);
      Sun et al. 2025, "The Curse of Depth in LLMs").
    implementation: None, "pallas", "pallas_interpret" or "xla" (module docstring).
    block_rows: rows per Pallas tile (None: pallas.py's default; a multiple of 8, of 16 for
      bfloat16 on TPU, a power of two on GPU). Ignored by "xla".

  Returns:
    x's shape and dtype; differentiable in x, scale and bias.
  """
  x = jnp.asarray(x)
  if x.ndim < 1 or x.size == 0:
    raise ValueError(f"x must be a non-empty [..., features] array; got shape {x.shape}")
  if x.dtype not in DTYPES:
    raise ValueError(f"x must be float32 or bfloat16; got {x.dtype}")
  features = x.shape[-1]
  scale = _check_vector("scale", scale, features)
  bias = None if bias is None else _check_vector("bias", bias, features)
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
  eps = static_number("eps", eps, positive=True)
  layer_index = positive_int("layer_index", layer_index)
  block_rows = positive_int("block_rows", block_rows)
  rows = x.size // features

  def unsupported(interpret: bool):
    err = block_rows is not None and pallas.block_rows_error(block_rows, x.dtype, interpret)
    if err:
      impl = "pallas_interpret" if interpret else "pallas"
      raise ValueError(f"{err} (implementation={impl!r})")
    return pallas.unsupported_reason(
        rows, features, x.dtype, interpret=interpret,
        block_rows=block_rows or pallas.default_block_rows(rows, features, x.dtype, interpret))

  impl = resolve_implementation(implementation, IMPLEMENTATIONS,
                                default=default_implementation(), unsupported_reason=unsupported,
                                op="fused_norm")
  kw = dict(kind=kind, eps=eps, layer_index=layer_index)
  if impl == "xla":
    return reference.fused_norm(x, scale, bias, **kw)
  return pallas.fused_norm(x, scale, bias, block_rows=block_rows,
                           interpret=impl == "pallas_interpret", **kw)
