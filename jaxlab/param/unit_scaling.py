"""Unit-scaling primitives (Blake et al. 2023, "Unit Scaling: Out-of-the-Box Low-Precision
Training"): scales applied to a tensor in the forward pass only or to its cotangent only, and
the RMS of a nonlinearity under a unit Gaussian, from which its unit scale follows."""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_fwd(x: jax.Array, scale: float) -> jax.Array:
  """scale * x in the forward pass; the cotangent passes through unchanged."""
  return x * scale


def _scale_fwd_fwd(x, scale):
  return x * scale, None


def _scale_fwd_bwd(scale, _, g):
  return (g,)


scale_fwd.defvjp(_scale_fwd_fwd, _scale_fwd_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_bwd(x: jax.Array, scale: float) -> jax.Array:
  """x unchanged in the forward pass; the cotangent is multiplied by scale."""
  return x


def _scale_bwd_fwd(x, scale):
  return x, None


def _scale_bwd_bwd(scale, _, g):
  return (g * scale,)


scale_bwd.defvjp(_scale_bwd_fwd, _scale_bwd_bwd)


def scaled_op(x: jax.Array, w: jax.Array, op, out: float, grad_in: float,
              grad_param: float) -> jax.Array:
  """out * op(x, w) in the forward pass with the cotangents of x and w multiplied by grad_in and
  grad_param instead of by out (jaxlab.param.OpScales)."""
  if out == grad_in == grad_param:
    y = op(x, w)
    return y if out == 1.0 else y * out
  return scale_fwd(op(scale_bwd(x, grad_in), scale_bwd(w, grad_param)), out)


@functools.lru_cache(maxsize=None)
def gaussian_rms(f: Callable[[jax.Array], jax.Array], derivative: bool = False,
                 points: int = 200) -> float:
  """RMS of an elementwise f (or of its derivative) under x ~ N(0, 1), by Gauss-Hermite
  quadrature: sqrt(E[f(x)^2])."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(points)
  with jax.ensure_compile_time_eval():  # a Python constant even when first called under jit
    x = jnp.asarray(nodes, jnp.float32)
    values = jax.vmap(jax.grad(f))(x) if derivative else f(x)
  mean_square = np.sum(weights * np.asarray(values, np.float64) ** 2) / math.sqrt(2 * math.pi)
  return math.sqrt(float(mean_square))
