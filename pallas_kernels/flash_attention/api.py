"""pallas_kernels.flash_attention: one signature, four implementations.

  "xla"              dense.py: plain XLA with a hand-written VJP, materialises the
                     [B, H, Lq, Lk] logits (with softcap: reference.py, plain autodiff).
  "xla_chunked"      chunked.py: FlashAttention-2's algorithm in XLA loops, O(seq) memory.
  "pallas"           pallas.py: the FlashAttention kernels compiled for this machine's TPU
                     (Mosaic) or GPU (Triton).
  "pallas_interpret" the same kernels in the Pallas interpreter (any backend; used by tests).
reference.py is the plain-autodiff oracle every implementation is tested against.

Dispatch is pallas_kernels/_dispatch.run's one rule: None is one program that picks by the
platform it is lowered for (jax.lax.platform_dependent): the TPU kernels on "tpu", the Triton
kernels on "cuda", unless pallas.unsupported_reason refuses the call for that target (logged
with the reason); elsewhere, and for a refused call, "xla" while the logits have at most
dense.DENSE_MAX_LOGITS elements (batch * heads * q_len * kv_len) and kv_len is below
dense.DENSE_MAX_KV_LEN, "xla_chunked" beyond. `mask` is taken by "xla" only, so with a mask None
runs "xla". An explicit "pallas" / "pallas_interpret" the kernels cannot run (no accelerator, a
block size the target cannot take) is a ValueError with the reason; so is any invalid argument.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _dispatch
from pallas_kernels._checks import positive_int, static_number as _static_number
from pallas_kernels.flash_attention import chunked, dense, pallas, reference

PATHS = ("xla", "xla_chunked")
IMPLEMENTATIONS = (_dispatch.KERNEL, _dispatch.INTERPRET, *PATHS)
DTYPES = (jnp.float32, jnp.bfloat16)


def _xla_default(num_logits: int | None, kv_len: int | None) -> str:
  """The XLA path None runs where no kernel runs: dense while the logits fit (DENSE_MAX_LOGITS)
  and kv_len is below DENSE_MAX_KV_LEN, where the chunked path starts to win
  (docs/results/kernels.md); chunked beyond (and for unknown sizes: long sequences)."""
  dense_fits = (num_logits is not None and num_logits <= dense.DENSE_MAX_LOGITS
                and (kv_len is None or kv_len < dense.DENSE_MAX_KV_LEN))
  return "xla" if dense_fits else "xla_chunked"


def default_implementation(num_logits: int | None = None, kv_len: int | None = None) -> str:
  """What implementation=None runs on this machine's backend for logits of `num_logits`
  elements over `kv_len` keys (None: long sequences): "pallas" on a TPU or GPU (where a call
  the kernels refuse runs the XLA path instead), else the XLA path of _xla_default."""
  if _dispatch.backend_target() is not None:
    return "pallas"
  return _xla_default(num_logits, kv_len)


def _segments(segment_ids, B, Lq, Lk):
  """Normalises segment_ids to (q_segment_ids [B, Lq], kv_segment_ids [B, Lk]) or (None, None)."""
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("segment_ids must be an int array [batch, seq] or a pair "
                       f"(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len]); got a "
                       f"{type(segment_ids).__name__} of length {len(segment_ids)}")
    q_seg, kv_seg = segment_ids
  elif Lq != Lk:
    raise ValueError(f"q_len {Lq} != kv_len {Lk}: pass segment_ids as a pair "
                     "(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])")
  else:
    q_seg = kv_seg = segment_ids
  q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
  for name, s, L in (("q_segment_ids", q_seg, Lq), ("kv_segment_ids", kv_seg, Lk)):
    if s.shape != (B, L):
      raise ValueError(f"{name} must have shape [batch, seq] = {(B, L)}; got {s.shape}")
    if not jnp.issubdtype(s.dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array; got dtype {s.dtype}")
  return q_seg, kv_seg


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              segment_ids=None, window: int | None = None, softcap: float | None = None,
              scale: float | None = None, mask: jax.Array | None = None,
              implementation: str | None = None, block_q: int | None = None,
              block_k: int | None = None) -> jax.Array:
  """softmax(mask(softcap(scale * q k^T))) v, the attention of FlashAttention (Dao et al. 2022).

  Args:
    q: [batch, q_len, heads, head_dim], float32 or bfloat16.
    k, v: [batch, kv_len, kv_heads, head_dim], same dtype; heads % kv_heads == 0
      (grouped-query attention: query head h reads kv head h // (heads // kv_heads)).
    causal: query at position i sees keys j <= i. Queries are aligned to the end of the keys
      (query i sits at position i + kv_len - q_len).
    segment_ids: int [batch, seq] (needs q_len == kv_len) or a pair (q_segment_ids [batch,
      q_len], kv_segment_ids [batch, kv_len]); a query sees only keys of its own segment
      (packed sequences).
    window: sliding window w >= 1: causal -> i - w < j <= i; non-causal -> |i - j| < w.
    softcap: logits -> softcap * tanh(logits / softcap) (after scaling).
    scale: logit scale, default 1 / sqrt(head_dim) (as jax.nn.dot_product_attention).
    mask: optional boolean, True = attend, broadcastable to [batch, heads, q_len, kv_len]
      (e.g. key padding [batch, 1, 1, kv_len]); "xla" only (None then picks "xla").
    implementation: None, "pallas", "pallas_interpret", "xla" or "xla_chunked" (module
      docstring).
    block_q, block_k: tile sizes for the blocked implementations (None: their default; see
      chunked.py and pallas.py for the valid values). Ignored by "xla".

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype; a query that sees no key gets 0.
  """
  _dispatch.check_implementation(implementation, dict.fromkeys(PATHS))
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be [batch, seq, heads, head_dim]; got shape {x.shape}")
  B, Lq, H, D = q.shape
  if k.shape != v.shape:
    raise ValueError(f"k and v shapes must match; got k {k.shape}, v {v.shape}")
  if k.shape[0] != B or k.shape[3] != D:
    raise ValueError(f"k/v [batch, kv_len, kv_heads, head_dim] must share batch {B} and "
                     f"head_dim {D} with q; got q {q.shape}, k {k.shape}")
  Lk, K = k.shape[1], k.shape[2]
  if min(B, Lq, H, D, Lk, K) == 0:
    raise ValueError(f"empty dimension in q {q.shape} or k {k.shape}")
  if H % K:
    raise ValueError(f"heads ({H}) must be a multiple of kv_heads ({K})")
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
    raise ValueError(f"q, k, v must all be float32 or all bfloat16; got {q.dtype}, {k.dtype}, "
                     f"{v.dtype}")
  if not isinstance(causal, (bool, np.bool_)):
    raise ValueError(f"causal must be a Python bool; got {causal!r}")
  q_seg, kv_seg = _segments(segment_ids, B, Lq, Lk)
  window = positive_int("window", window)
  softcap = None if softcap is None else _static_number("softcap", softcap, positive=True)
  scale = None if scale is None else _static_number("scale", scale, positive=False)
  block_q = positive_int("block_q", block_q)
  block_k = positive_int("block_k", block_k)
  kw = dict(causal=bool(causal), window=window, softcap=softcap, scale=scale)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_ or mask.ndim > 4:
      raise ValueError(f"mask must be boolean, broadcastable to [batch, heads, q_len, kv_len]; "
                       f"got {mask.dtype}{list(mask.shape)}")
    jnp.broadcast_shapes(mask.shape, (B, H, Lq, Lk))
    if implementation not in (None, "xla"):
      raise ValueError(f"mask is supported by implementation='xla' only (got "
                       f"{implementation!r}); the blocked paths take causal / window / "
                       "segment_ids")

  # the XLA paths and the kernels, all functions of the same operands
  def xla(q, k, v, q_seg, kv_seg):
    if softcap is not None:
      return reference.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, **kw)
    return dense.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, mask=mask,
                           **{n: x for n, x in kw.items() if n != "softcap"})

  def xla_chunked(q, k, v, q_seg, kv_seg):
    return chunked.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                             block_q=block_q, block_k=block_k, **kw)

  def kernel(target, interpret):
    return lambda q, k, v, q_seg, kv_seg: pallas.attention(
        q, k, v, target=target, interpret=interpret, q_segment_ids=q_seg,
        kv_segment_ids=kv_seg, block_q=block_q, block_k=block_k, **kw)

  def unsupported(target, interpret):
    return pallas.unsupported_reason(q.shape, k.shape, q.dtype, target=target,
                                     interpret=interpret, block_q=block_q, block_k=block_k)

  if mask is not None and implementation is None:
    implementation = "xla"  # the blocked paths and kernels take no mask
  return _dispatch.run(
      "attention", implementation, (q, k, v, q_seg, kv_seg),
      paths={"xla": xla, "xla_chunked": xla_chunked}, default=_xla_default(B * H * Lq * Lk, Lk),
      kernel=kernel, unsupported_reason=unsupported)
