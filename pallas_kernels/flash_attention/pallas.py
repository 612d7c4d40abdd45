"""FlashAttention (Dao et al. 2022) as Pallas kernels with the FlashAttention-2 backward (Dao
2023): a forward kernel that also writes the logsumexp, a dQ kernel and a dK/dV kernel, tied
together by jax.custom_vjp (pallas_call has no reverse-mode rule). All accumulation is in f32
(bf16 inputs feed the matmuls directly); the block maths (online softmax step, masks, block
ranges) is chunked.py's, the XLA version of the same algorithm.

One entry, `attention(..., target=, interpret=)`, two kernel variants, because the two
compilers want different shapes of the same algorithm:
  * target "tpu": pallas_tpu.py, compiled by Mosaic. Key/value blocks on a grid axis with the
    softmax state in VMEM scratch, so VMEM per step is independent of the sequence length.
    Blocks: multiples of 8 rows for f32 and 16 for bf16 (sublane tiling), 128 a good choice;
    head_dim zero-padded to a multiple of 128 (lanes).
  * target "gpu": pallas_gpu.py, compiled by Triton (its compiler params are passed explicitly;
    jax >= 0.10 would otherwise pick Mosaic GPU). A fori_loop over key blocks inside each program
    reading whole-sequence K/V refs in global memory. Blocks: powers of two >= 16; head_dim
    zero-padded to a power of two, at most 256.
The layout rules follow `target` in interpret mode too, so interpreter tests run exactly the
blocks the hardware gets. Zero-padding head_dim is exact (padded columns add 0 to q.k and produce
0 outputs); padded sequence positions are masked keys or discarded query rows.

Status: both variants lower from a CPU host via jax.export (platforms "tpu" and "cuda"; see
tests/pallas_kernels/flash_attention/test_lowering.py) and run in the Pallas interpreter against
reference.py; they have not yet been compiled or run on a TPU or GPU, whose compilers check more
than lowering does.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels._tiling import next_pow2, round_up
from pallas_kernels.flash_attention import pallas_gpu, pallas_tpu
from pallas_kernels.flash_attention.pallas_common import Config

DEFAULT_BLOCK = 128
VMEM_BUDGET_BYTES = 12 * 2**20  # of a TPU's default 16 MiB scoped VMEM
MAX_GPU_HEAD_DIM = 256
_KERNELS = {"tpu": pallas_tpu, "gpu": pallas_gpu}


def _check_target(target: str) -> None:
  if target not in _KERNELS:
    raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")


def padded_head_dim(head_dim: int, target: str) -> int:
  """head_dim zero-padded to the target's layout: a multiple of 128 lanes (TPU) or a power of
  two >= 16 (Triton's dot)."""
  _check_target(target)
  return round_up(head_dim, 128) if target == "tpu" else max(16, next_pow2(head_dim))


def _tpu_rows(dtype) -> int:
  """Row multiple of a TPU block: 8 sublanes of 32 bits, so 16 rows of a 16-bit dtype."""
  return 8 * (4 // jnp.dtype(dtype).itemsize)


def block_size_error(name: str, value: int, target: str, dtype=jnp.float32) -> str | None:
  """Why `value` is not a valid block size for `target` and `dtype`, or None if it is."""
  _check_target(target)
  if target == "gpu":
    if value < 16 or value != next_pow2(value):
      return f"{name}={value}: the Triton (GPU) kernels need a power of two >= 16"
  elif value % _tpu_rows(dtype):
    return (f"{name}={value}: the TPU kernels need a multiple of {_tpu_rows(dtype)} for "
            f"{jnp.dtype(dtype).name} (sublane tiling)")
  return None


def default_block(seq_len: int, target: str, dtype=jnp.float32) -> int:
  """DEFAULT_BLOCK, shrunk for short sequences to the smallest valid size covering them."""
  _check_target(target)
  if target == "gpu":
    return min(DEFAULT_BLOCK, max(16, next_pow2(seq_len)))
  return min(DEFAULT_BLOCK, round_up(seq_len, _tpu_rows(dtype)))


def unsupported_reason(q_shape, k_shape, dtype, *, target: str, interpret: bool = False,
                       block_q: int | None = None, block_k: int | None = None) -> str | None:
  """Why the `target` kernels cannot take this call (None if they can), decided before any
  tracing. Validation of the arguments themselves is api.py's job; this covers the kernels'
  layout rules and the TPU VMEM budget (per grid step, independent of the sequence length).
  `interpret` changes nothing: the interpreter runs the target's exact layout."""
  del interpret
  _check_target(target)
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    err = value is not None and block_size_error(name, value, target, dtype)
    if err:
      return err
  D = q_shape[3]
  dp = padded_head_dim(D, target)
  if target == "gpu":
    if dp > MAX_GPU_HEAD_DIM:
      return f"head_dim {D} (padded {dp}) exceeds {MAX_GPU_HEAD_DIM} for the GPU kernels"
    return None
  bq = block_q or default_block(q_shape[1], target, dtype)
  bk = block_k or default_block(k_shape[1], target, dtype)
  need = pallas_tpu.vmem_bytes(bq, bk, dp, jnp.dtype(dtype).itemsize)
  if need > VMEM_BUDGET_BYTES:
    return (f"a grid step needs ~{need / 2**20:.1f} MiB of VMEM (> {VMEM_BUDGET_BYTES / 2**20:.0f}"
            f" MiB budget) for block_q {bq}, block_k {bk}, head_dim {dp}; use smaller blocks")
  return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(c, q, k, v, qs, ks):
  return _KERNELS[c.target].forward(c, q, k, v, qs, ks)[0]


def _flash_fwd(c, q, k, v, qs, ks):
  o, lse = _KERNELS[c.target].forward(c, q, k, v, qs, ks)
  return o, (q, k, v, qs, ks, o, lse)


def _flash_bwd(c, res, do):
  q, k, v, qs, ks, o, lse = res
  return (*_KERNELS[c.target].backward(c, q, k, v, qs, ks, o, lse, do), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def attention(q, k, v, *, target: str, causal: bool = False, q_segment_ids=None,
              kv_segment_ids=None, window: int | None = None, softcap: float | None = None,
              scale: float | None = None, block_q: int | None = None,
              block_k: int | None = None, interpret: bool = False) -> jax.Array:
  """FlashAttention with the Pallas kernels of `target` ("tpu": Mosaic, "gpu": Triton); same
  conventions and arguments as reference.attention, plus block sizes (default 128, shrunk for
  short sequences; valid values per target in the module docstring) and `interpret` (run the
  kernels in the Pallas interpreter, on any backend). A call the kernels cannot take raises
  ValueError with unsupported_reason's reason, before lowering."""
  B, Lq, H, D = q.shape
  Lk, K = k.shape[1], k.shape[2]
  reason = unsupported_reason(q.shape, k.shape, q.dtype, target=target, interpret=interpret,
                              block_q=block_q, block_k=block_k)
  if reason is not None:
    raise ValueError(f"flash_attention.pallas ({target}): {reason}")
  bq = block_q or default_block(Lq, target, q.dtype)
  bk = block_k or default_block(Lk, target, q.dtype)
  lq, lk = round_up(Lq, bq), round_up(Lk, bk)
  dp = padded_head_dim(D, target)
  c = Config(causal=causal, window=window, softcap=softcap,
             scale=D ** -0.5 if scale is None else float(scale), q_len=Lq, k_len=Lk,
             block_q=bq, block_k=bk, groups=H // K, target=target, interpret=interpret)

  def prep(x, length):  # [B, L, h, D] -> zero-padded [B, h, length, dp]
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, dp - D)))
    return x.transpose(0, 2, 1, 3)

  qs = ks = None
  if q_segment_ids is not None:
    qs = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, lq - Lq)))
    ks = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, lk - Lk)))
  o = _flash(c, prep(q, lq), prep(k, lk), prep(v, lk), qs, ks)
  return o.transpose(0, 2, 1, 3)[:, :Lq, :, :D]
