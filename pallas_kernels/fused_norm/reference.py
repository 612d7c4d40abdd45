"""LayerNorm and RMSNorm over the last axis in plain XLA (jnp), differentiated by autodiff: the
reference the Pallas kernels and the "xla" implementation (xla.py, the same forward with a
written-out backward) are tested against.

  layernorm: y = ((x - mean(x)) / sqrt(var(x) + eps) * scale + bias) * alpha   (Ba et al. 2016)
  rmsnorm:   y = (x / sqrt(mean(x^2) + eps) * scale + bias) * alpha            (Zhang & Sennrich
                                                                                2019; bias 0
                                                                                unless given)
with mean / var over the last (feature) axis, var the biased (1/D) variance, and alpha = 1 or,
with layer_index l >= 1, alpha = 1 / sqrt(l): LayerNorm Scaling (Sun et al. 2025, "The Curse of
Depth in Large Language Models", Sec. 4: the output of the norm in layer l, counted from 1, is
scaled by 1/sqrt(l); jaxlab.depth's "lns" placement uses the same l = block index + 1).

Statistics and arithmetic are float32 whatever the input dtype; y is cast to x's dtype.
"""

import jax
import jax.numpy as jnp

KINDS = ("layernorm", "rmsnorm")


def layer_scale(layer_index: int | None) -> float:
  """alpha: 1 / sqrt(layer_index), or 1 when layer_index is None."""
  return 1.0 if layer_index is None else float(layer_index) ** -0.5


def normalize(x, *, kind: str, eps: float):
  """(xhat, rstd) in float32: xhat = (x - mean) * rstd (layernorm) or x * rstd (rmsnorm), rstd
  the per-row 1 / sqrt(var + eps) or 1 / sqrt(mean(x^2) + eps) with a trailing axis of 1."""
  x = x.astype(jnp.float32)
  if kind == "layernorm":
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  return x * rstd, rstd


def fused_norm(x, scale, bias=None, *, kind: str = "layernorm", eps: float = 1e-6,
               layer_index: int | None = None) -> jax.Array:
  """Module docstring's y for x [..., D], scale / bias [D]; arguments are assumed valid (api.py
  checks them)."""
  xhat, _ = normalize(x, kind=kind, eps=eps)
  y = xhat * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return (y * layer_scale(layer_index)).astype(x.dtype)
