"""The kernel rows of experiments.device_check: each op's inputs, its public pallas_kernels entry
(called with an `implementation`), its f32 reference and the XLA paths it is timed against."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from pallas_kernels import _dispatch
from pallas_kernels.depthwise_conv import reference as dw_ref
from pallas_kernels.flash_attention import reference as attn_ref
from pallas_kernels.fused_norm import reference as norm_ref
from pallas_kernels.int8_matmul import reference as int8_ref
from pallas_kernels.long_convolution import reference as lc_ref

F32, BF16 = jnp.float32, jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Case:
  """One kernel row: `op(*args, implementation=...)` against `reference(*f32 args)`.

  diff: indices of the arguments differentiated (gradients checked and fwd+bwd timed);
  paths: XLA implementations of the op to time against; baselines: other functions of *args
  to time (jax.nn.dot_product_attention); check_slice: the leading batch elements checked
  against the reference (None: all)."""
  name: str
  shape: str
  dtype: str
  args: tuple
  op: Callable
  reference: Callable
  diff: tuple[int, ...]
  paths: tuple[str, ...]
  baselines: dict = dataclasses.field(default_factory=dict)
  check_slice: int | None = None


def normal(rng: np.random.Generator, shape, dtype=F32) -> jax.Array:
  return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)


def _attention_case(rng, name, B, L, H, K, D, dtype, baselines: bool) -> Case:
  q, k, v = (normal(rng, (B, L, n, D), dtype) for n in (H, K, K))

  def op(q, k, v, implementation):
    return pk.attention(q, k, v, causal=True, implementation=implementation)

  extra = {}
  if baselines:
    extra["jax.nn xla"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="xla")
    if _dispatch.backend_target() == "gpu" and dtype == BF16:
      extra["jax.nn cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn")
  return Case(name, f"B={B} L={L} H={H} K={K} D={D} causal", jnp.dtype(dtype).name, (q, k, v),
              op, lambda q, k, v: attn_ref.attention(q, k, v, causal=True), (0, 1, 2),
              ("xla", "xla_chunked"), extra, check_slice=1)


def _depthwise2d_case(rng, name, B, S, C, ksize, dtype) -> Case:
  x, w = normal(rng, (B, S, S, C), dtype), normal(rng, (ksize, ksize, C), dtype) / ksize
  pads = (dw_ref.same_pads(ksize),) * 2
  return Case(name, f"B={B} {S}x{S} C={C} k={ksize}x{ksize} SAME", jnp.dtype(dtype).name, (x, w),
              lambda x, w, implementation: pk.depthwise_conv2d(
                  x, w, padding="SAME", implementation=implementation),
              lambda x, w: dw_ref.depthwise_conv2d(x, w, padding=pads), (0, 1), ("xla",))


def _long_conv_case(rng, name, B, L, C) -> Case:
  u, k = normal(rng, (B, L, C)), normal(rng, (L, C)) / L ** 0.5
  return Case(name, f"B={B} L={L} C={C}", "float32", (u, k),
              lambda u, k, implementation: pk.long_conv(u, k, implementation=implementation),
              lc_ref.long_conv, (0, 1), ("fft",))


def _norm_case(rng, kind, rows, D, dtype) -> Case:
  x = normal(rng, (rows, D), dtype)
  scale = 1 + 0.1 * normal(rng, (D,), dtype)
  bias = 0.1 * normal(rng, (D,), dtype) if kind == "layernorm" else None
  args = (x, scale) if bias is None else (x, scale, bias)
  return Case(f"fused_{kind}", f"{rows}x{D}", jnp.dtype(dtype).name, args,
              lambda *a, implementation: pk.fused_norm(*a, kind=kind,
                                                       implementation=implementation),
              lambda *a: norm_ref.fused_norm(*a, kind=kind), tuple(range(len(args))), ("xla",))


def _int8_case(rng, M, K, N) -> Case:
  x_q = jnp.asarray(rng.integers(-127, 128, (M, K)), jnp.int8)
  w_q = jnp.asarray(rng.integers(-127, 128, (K, N)), jnp.int8)
  xs = jnp.asarray(rng.uniform(0.5, 1.5, M) / 127, F32)
  ws = jnp.asarray(rng.uniform(0.5, 1.5, N) / 127, F32)
  return Case("int8_matmul", f"{M}x{K} @ {K}x{N}", "int8", (x_q, w_q, xs, ws),
              lambda *a, implementation: pk.int8_matmul(*a, implementation=implementation),
              int8_ref.int8_matmul, (2, 3), ("xla",))


def cases(size: str) -> list[Case]:
  """The kernel rows at `size` ("toy": interpreter-sized; "full": realistic, < 8 min on H100)."""
  rng = np.random.default_rng(0)
  toy = size == "toy"
  B1, L1, C1 = (2, 128, 128) if toy else (8, 4096, 768)
  rows, D = (64, 256) if toy else (16384, 1024)
  x1, w1 = normal(rng, (B1, L1, C1)), normal(rng, (4, C1)) / 2
  return [
      _attention_case(rng, "attention", *((1, 256, 2, 2, 64) if toy else (4, 4096, 16, 16, 128)),
                      BF16, baselines=True),
      _attention_case(rng, "attention_gqa", *((1, 256, 4, 1, 64) if toy else (2, 2048, 16, 2, 64)),
                      F32, baselines=False),
      Case("depthwise_conv1d", f"B={B1} L={L1} C={C1} taps=4 causal", "float32", (x1, w1),
           lambda x, w, implementation: pk.depthwise_conv1d(x, w, causal=True,
                                                            implementation=implementation),
           lambda x, w: dw_ref.depthwise_conv1d(x, w, causal=True), (0, 1), ("xla",)),
      _depthwise2d_case(rng, "depthwise_conv2d_7x7", *((1, 16, 128) if toy else (32, 56, 128)),
                        7, BF16),
      _depthwise2d_case(rng, "depthwise_conv2d_31x31", *((1, 32, 128) if toy else (8, 64, 128)),
                        31, F32),
      _long_conv_case(rng, "long_conv", *((1, 256, 128) if toy else (8, 1024, 512))),
      _long_conv_case(rng, "long_conv_long", *((1, 512, 128) if toy else (4, 4096, 256))),
      _norm_case(rng, "layernorm", rows, D, BF16),
      _norm_case(rng, "rmsnorm", rows, D, F32),
      _int8_case(rng, *((64, 256, 128) if toy else (4096, 4096, 4096))),
  ]
