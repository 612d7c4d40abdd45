"""pallas_kernels.fused_norm: LayerNorm / RMSNorm over the last axis, with optional LayerNorm
Scaling by 1/sqrt(layer_index) (Sun et al. 2025).

  "xla"              xla.py: plain jnp, float32 statistics, the forward of reference.py (the
                     oracle the kernels are tested against) with its backward written out
                     (measured: the bench LM step 6% faster on XLA:CPU than with autodiff).
  "pallas"           pallas.py: row-tiled forward and backward kernels compiled for this
                     machine's TPU (Mosaic) or GPU (Triton).
  "pallas_interpret" the same kernels in the Pallas interpreter, laid out for this machine's
                     accelerator or, on a CPU host, the TPU (used by tests).
None follows the one rule of every op (pallas_kernels/_dispatch.py): one program that runs the
kernel compiled for the platform it is lowered for (tpu, cuda) and "xla" on every other
platform or where pallas.unsupported_reason refuses the call for that target (logged), e.g. an
explicit block_rows the target cannot take or a tile beyond the TPU's VMEM budget. Invalid
arguments raise ValueError; so does an explicit "pallas" / "pallas_interpret" the kernels
cannot run (e.g. "pallas" on a CPU), naming the values that can.
"""

import jax
import jax.numpy as jnp

from pallas_kernels import _dispatch
from pallas_kernels._checks import positive_int, static_number
from pallas_kernels.fused_norm import pallas, reference, xla

IMPLEMENTATIONS = ("pallas", "pallas_interpret", "xla")
DTYPES = (jnp.float32, jnp.bfloat16)
KINDS = reference.KINDS


def default_implementation() -> str:
  """What None runs on this machine's backend for a call the kernels take: "pallas" on a TPU or
  GPU, "xla" elsewhere."""
  return "xla" if _dispatch.backend_target() is None else "pallas"


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
    block_rows: rows per Pallas tile (None: pallas.default_block_rows; on TPU a multiple of 8,
      of 16 for bfloat16, or at least all rows; on GPU a power of two). Ignored by "xla"; a
      value a target cannot take makes None run "xla" there.

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
  kw = dict(kind=kind, eps=eps, layer_index=layer_index)

  def kernel(target, interpret):
    return lambda x, scale, bias: pallas.fused_norm(
        x, scale, bias, block_rows=block_rows, target=target, interpret=interpret, **kw)

  return _dispatch.run(
      "fused_norm", implementation, (x, scale, bias),
      paths={"xla": lambda x, scale, bias: xla.fused_norm(x, scale, bias, **kw)},
      default="xla", kernel=kernel,
      unsupported_reason=lambda target, interpret: pallas.unsupported_reason(
          rows, features, x.dtype, block_rows=block_rows, target=target))
