"""pallas_kernels.int8_matmul / quantized_matmul: int8 x int8 matmuls with int32 accumulation and
per-token x per-output-channel float32 scales.

  "xla"              reference.py: lax.dot_general(int8, int8 -> int32), then the rescale.
  "pallas"           pallas.py's kernels compiled for this machine's accelerator: Mosaic on TPU
                     (a K grid axis with an int32 VMEM accumulator), Triton on GPU (a K loop
                     inside each program); ValueError on CPU or when they refuse the call.
  "pallas_interpret" the same kernels in the Pallas interpreter, laid out for this machine's
                     accelerator (the TPU's on CPU); used by the tests.
None follows the one dispatch rule of pallas_kernels (_dispatch.run): one program that runs the
kernels where it is lowered for "tpu" or "cuda" (unless pallas.unsupported_reason refuses the
call there, e.g. block sizes the target cannot tile or a TPU tile over the VMEM budget: then
"xla", logged) and "xla" on every other platform, so a step exported or AOT-compiled for a TPU or
GPU on a CPU host carries the kernels. On GPU the kernel is the default although XLA also lowers
the int8 dot to an int8 GEMM (cuBLASLt): the kernel fuses the per-row / per-column rescale (and
the scale gradients) where XLA writes the [M, N] int32 product out first; no GPU timing decides
between the two yet (experiments.device_check compares them). Invalid arguments raise
ValueError, as does an explicit "pallas" / "pallas_interpret" the kernels cannot run, naming the
values that can. quantized_matmul's straight-through backward is two float32 XLA dots (no
kernel).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import _dispatch
from pallas_kernels._checks import positive_int
from pallas_kernels.int8_matmul import pallas, reference

IMPLEMENTATIONS = ("pallas", "pallas_interpret", "xla")
KERNEL_TARGETS = ("tpu", "gpu")  # where None runs the kernels
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16)
_PATHS = {"xla": reference.int8_matmul}


def default_implementation() -> str:
  """What None runs on this machine's default backend: "pallas" on TPU and GPU, else "xla"."""
  return "pallas" if _dispatch.backend_target() in KERNEL_TARGETS else "xla"


def _scale_vector(name: str, s, size: int, axis: str):
  """A float scale given as a scalar or [size] vector, as float32 [size]."""
  s = jnp.asarray(s)
  if not jnp.issubdtype(s.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array; got dtype {s.dtype}")
  if s.shape not in ((), (size,)):
    raise ValueError(f"{name} must be a scalar or have shape [{axis}] = ({size},); got {s.shape}")
  return jnp.broadcast_to(s.astype(jnp.float32), (size,))


def _blocks(block_m, block_n, block_k) -> tuple:
  return tuple(positive_int(n, b) for n, b in zip(pallas.BLOCK_NAMES, (block_m, block_n, block_k)))


def _run(op: str, implementation, blocks, x_q, w_q, x_scale, w_scale):
  """int8_matmul of valid operands by the one dispatch rule (module docstring)."""
  (M, K), N = x_q.shape, w_q.shape[1]
  kw = dict(zip(pallas.BLOCK_NAMES, blocks))
  return _dispatch.run(
      op, implementation, (x_q, w_q, x_scale, w_scale), paths=_PATHS, default="xla",
      kernel=lambda target, interpret: functools.partial(
          pallas.int8_matmul, target=target, interpret=interpret, **kw),
      unsupported_reason=lambda target, interpret: pallas.unsupported_reason(M, N, K, blocks,
                                                                             target),
      kernel_targets=KERNEL_TARGETS)


def int8_matmul(x_q: jax.Array, w_q: jax.Array, x_scale, w_scale, *,
                implementation: str | None = None, block_m: int | None = None,
                block_n: int | None = None, block_k: int | None = None) -> jax.Array:
  """y = float32(x_q @ w_q, accumulated in int32) * x_scale[:, None] * w_scale[None, :].

  Equals the float32 matmul of the dequantized operands (x_scale[:, None] * x_q) @ (w_q *
  w_scale[None, :]) whenever that float matmul is exact (e.g. power-of-two scales and
  K * 127^2 < 2^24); tests check this against jaxlab.quant's fake quantizers bitwise.

  Args:
    x_q: int8 [M, K] (activation codes, one row per token).
    w_q: int8 [K, N] (weight codes, one column per output channel).
    x_scale: float scalar or [M] (per-token scales); used as float32.
    w_scale: float scalar or [N] (per-output-channel scales); used as float32.
    implementation: None, "pallas", "pallas_interpret" or "xla" (module docstring).
    block_m, block_n, block_k: Pallas tile sizes (None: pallas.default_blocks). TPU: multiples
      of 32 / 128 / 128; GPU: powers of two >= 16 / 16 / 32. Ignored by "xla"; sizes a target
      cannot take make None run "xla" there (logged) and an explicit kernel raise.

  Returns:
    float32 [M, N]. Gradients: x_q and w_q are integers and get none (jax.grad with respect to
    them is an error, as for any integer input); x_scale and w_scale get their exact gradients
    (dx_scale[m] = sum_n g[m, n] acc[m, n] w_scale[n], and symmetrically; summed over the
    broadcast when a scale is a scalar).
  """
  x_q, w_q = jnp.asarray(x_q), jnp.asarray(w_q)
  for name, a, layout in (("x_q", x_q, "[M, K]"), ("w_q", w_q, "[K, N]")):
    if a.ndim != 2:
      raise ValueError(f"{name} must be {layout}; got shape {a.shape}")
    if a.dtype != jnp.int8:
      raise ValueError(f"{name} must be int8; got dtype {a.dtype}")
  (M, K), (K2, N) = x_q.shape, w_q.shape
  if K != K2:
    raise ValueError(f"x_q [M, K] and w_q [K, N] must share K; got {x_q.shape} and {w_q.shape}")
  if min(M, K, N) == 0:
    raise ValueError(f"empty dimension in x_q {x_q.shape} or w_q {w_q.shape}")
  x_scale = _scale_vector("x_scale", x_scale, M, "M")
  w_scale = _scale_vector("w_scale", w_scale, N, "N")
  _dispatch.check_implementation(implementation, _PATHS)
  blocks = _blocks(block_m, block_n, block_k)
  return _run("int8_matmul", implementation, blocks, x_q, w_q, x_scale, w_scale)


# ----------------------------------------------------------------------------- quantized_matmul


def _dequantize_matmuls(res, g):
  """The straight-through backward: cotangents of the float32 matmul of the dequantized
  operands, dx = g (w_q * w_scale)^T and dw = (x_scale * x_q)^T g."""
  x_q, x_scale, w_q, w_scale = res
  x = x_q.astype(jnp.float32) * x_scale[:, None]
  w = w_q.astype(jnp.float32) * w_scale[None, :]
  hi = lax.Precision.HIGHEST
  dx = lax.dot_general(g, w, (((1,), (1,)), ((), ())), precision=hi)
  dw = lax.dot_general(x, g, (((0,), (0,)), ((), ())), precision=hi)
  return dx, dw


def _quantize_both(x, w):
  x_q, x_scale = reference.quantize_int8(x, axis=1)  # per token: one scale per row
  w_q, w_scale = reference.quantize_int8(w, axis=0)  # per output channel: one per column
  return x_q, x_scale, w_q, w_scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _quantized(implementation, blocks, dtypes, x, w):
  return _quantized_fwd(implementation, blocks, dtypes, x, w)[0]


def _quantized_fwd(implementation, blocks, dtypes, x, w):
  del dtypes
  res = _quantize_both(x, w)
  x_q, x_scale, w_q, w_scale = res
  return _run("quantized_matmul", implementation, blocks, x_q, w_q, x_scale, w_scale), res


def _quantized_bwd(implementation, blocks, dtypes, res, g):
  """dtypes: (x.dtype, w.dtype), static, for the cotangents' dtypes."""
  del implementation, blocks
  dx, dw = _dequantize_matmuls(res, g)
  return dx.astype(dtypes[0]), dw.astype(dtypes[1])


_quantized.defvjp(_quantized_fwd, _quantized_bwd)


def quantized_matmul(x: jax.Array, w: jax.Array, *, implementation: str | None = None,
                     block_m: int | None = None, block_n: int | None = None,
                     block_k: int | None = None) -> jax.Array:
  """x @ w with both operands quantized to int8 on the fly: x per token (one symmetric abs-max
  scale per row of the flattened [tokens, K]) and w per output channel (one per column), then
  int8_matmul. The forward equals jaxlab's int8 fake-quant matmul (jaxlab.quant with
  IntFormat(bits=8) per_token activations / per_channel weights, then a float32 matmul)
  whenever that float matmul is exact; the backward is the straight-through estimator with the
  identity STE, i.e. the gradients of that float32 fake-quant matmul: dx = g (Q(w))^T,
  dw = (Q(x))^T g, with Q the dequantized operands (saved as int8 codes + scales).

  Args:
    x: [..., K], float32 or bfloat16 (quantized in float32).
    w: [K, N], float32 or bfloat16.
    implementation, block_m, block_n, block_k: as for int8_matmul (of the forward's integer
      matmul; the backward matmuls are float32 XLA dots at HIGHEST precision).

  Returns:
    float32 [..., N]; gradients come back in x's and w's dtypes.
  """
  x, w = jnp.asarray(x), jnp.asarray(w)
  if x.ndim < 2 or w.ndim != 2:
    raise ValueError(f"x must be [..., K] (at least 2-D) and w [K, N]; got shapes {x.shape} and "
                     f"{w.shape}")
  if x.dtype not in FLOAT_DTYPES or w.dtype not in FLOAT_DTYPES:
    raise ValueError(f"x and w must be float32 or bfloat16; got {x.dtype} and {w.dtype}")
  K, N = w.shape
  if x.shape[-1] != K:
    raise ValueError(f"x [..., K] and w [K, N] must share K; got {x.shape} and {w.shape}")
  if x.size == 0 or w.size == 0:
    raise ValueError(f"empty dimension in x {x.shape} or w {w.shape}")
  _dispatch.check_implementation(implementation, _PATHS)
  blocks = _blocks(block_m, block_n, block_k)
  return _quantized(implementation, blocks, (x.dtype, w.dtype), x.reshape(-1, K),
                    w).reshape(*x.shape[:-1], N)
