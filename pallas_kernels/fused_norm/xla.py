"""LayerNorm / RMSNorm in plain XLA with the closed-form backward: fused_norm's "xla" path.

The forward is reference.py's. The backward is written out (Ba et al. 2016's LayerNorm
gradient) from the saved normalised input xhat and the per-row rstd, with alpha the LayerNorm
Scaling factor (reference.layer_scale):

  g = dy * scale * alpha
  layernorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
  rmsnorm:   dx = rstd * (g - xhat * mean(g * xhat))
  dscale = sum over rows of dy * alpha * xhat,   dbias = sum over rows of dy * alpha

with means over the feature axis. Autodiff of the forward reaches the same values through the
mean subtraction, the square and the rsqrt, in more passes over the activations.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.fused_norm import reference


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _norm(x, scale, bias, kind, eps, alpha):
  return _norm_fwd(x, scale, bias, kind, eps, alpha)[0]


def _norm_fwd(x, scale, bias, kind, eps, alpha):
  xhat, rstd = reference.normalize(x, kind=kind, eps=eps)
  y = xhat * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return (y * alpha).astype(x.dtype), (xhat, rstd, scale, bias)


def _norm_bwd(kind, eps, alpha, res, dy):
  del eps
  xhat, rstd, scale, bias = res
  x_dtype = dy.dtype  # y's, which is x's
  dy = dy.astype(jnp.float32) * alpha
  g = dy * scale.astype(jnp.float32)
  proj = jnp.mean(g * xhat, axis=-1, keepdims=True)
  if kind == "layernorm":
    g = g - jnp.mean(g, axis=-1, keepdims=True)
  dx = (rstd * (g - xhat * proj)).astype(x_dtype)
  rows = tuple(range(dy.ndim - 1))
  dscale = jnp.sum(dy * xhat, axis=rows).astype(scale.dtype)
  dbias = None if bias is None else jnp.sum(dy, axis=rows).astype(bias.dtype)
  return dx, dscale, dbias


_norm.defvjp(_norm_fwd, _norm_bwd)


def fused_norm(x, scale, bias=None, *, kind: str = "layernorm", eps: float = 1e-6,
               layer_index: int | None = None) -> jax.Array:
  """reference.fused_norm's y with the backward above; arguments are assumed valid (api.py
  checks them)."""
  return _norm(x, scale, bias, kind, eps, reference.layer_scale(layer_index))
