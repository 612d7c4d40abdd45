"""int8 x int8 matmul with per-row / per-column float32 rescaling in plain XLA: the reference the
Pallas kernels are tested against, the "xla" implementation, and the symmetric int8 quantizer
behind quantized_matmul.

  y[m, n] = float32(sum_k x_q[m, k] w_q[k, n]) * x_scale[m] * w_scale[n]

with the sum accumulated exactly in int32 (|x_q w_q| <= 2^14, so exact up to K = 2^17 terms)
and the two multiplications done in this order, in float32 (every implementation here uses the
same order, so they agree bitwise). This is the integer form of a fake-quant matmul with
per-token activation and per-output-channel weight scales: sum_k (s_m q_mk)(t_n w_kn) =
s_m t_n sum_k q_mk w_kn (jaxlab.quant.config's module docstring).

Quantizer: symmetric, narrow range, abs-max scale (jaxlab.quant.quantizers.int_fake_quant with
bits=8, symmetric=True, nearest rounding): scale = max|x| / 127 over the reduced axis (1 where
that max is 0), q = clip(round(x / scale), -127, 127). Implemented here rather than imported:
pallas_kernels sits below jaxlab.quant in the dependency order (jaxlab imports pallas_kernels,
never the reverse), so importing jaxlab.quant from here would cycle as soon as jaxlab.quant uses
this kernel; tests check the two agree bitwise.
"""

import jax
import jax.numpy as jnp
from jax import lax

QMAX = 127  # symmetric narrow int8 range [-127, 127]


def quantize_int8(x, axis: int):
  """(q int8, scale float32): symmetric abs-max int8 quantization with one scale per index of
  the axes other than `axis` (the reduced axis; the scale has it removed), computed in float32.
  q * scale is jaxlab's int8 fake quant of x (module docstring)."""
  x = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True) / QMAX
  scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  q = jnp.clip(jnp.round(x / scale), -QMAX, QMAX).astype(jnp.int8)
  return q, jnp.squeeze(scale, axis)


def int8_matmul(x_q, w_q, x_scale, w_scale) -> jax.Array:
  """Module docstring's y: x_q int8 [M, K], w_q int8 [K, N], x_scale float32 [M], w_scale
  float32 [N] -> float32 [M, N]; arguments are assumed valid (api.py checks them)."""
  acc = lax.dot_general(x_q, w_q, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  return acc.astype(jnp.float32) * x_scale[:, None] * w_scale[None, :]
