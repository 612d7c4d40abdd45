"""What the TPU (pallas_tpu.py) and GPU (pallas_gpu.py) FlashAttention kernels share: the static
call description and the visibility mask of one (query tile, key tile) pair."""

import dataclasses

import jax.numpy as jnp
from jax import lax

from pallas_kernels.flash_attention import chunked
from pallas_kernels.flash_attention.reference import visible


@dataclasses.dataclass(frozen=True)
class Config(chunked.Config):
  """chunked.Config plus the kernels' own static facts (hashable: a custom_vjp nondiff arg)."""
  groups: int = 1  # query heads per kv head
  target: str = "tpu"  # "tpu" (Mosaic) or "gpu" (Triton): which layout and compiler
  interpret: bool = False  # run in the Pallas interpreter


def tile_mask(c: Config, i, j, q_seg=None, k_seg=None):
  """Visibility of key block j to query block i as a [block_q, block_k] boolean tile; q_seg
  [block_q, 1] and k_seg [1, block_k] are the tiles' segment ids (or None)."""
  shape = (c.block_q, c.block_k)
  q_pos = i * c.block_q + c.offset + lax.broadcasted_iota(jnp.int32, shape, 0)
  k_pos = j * c.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
  return visible(q_pos, k_pos, causal=c.causal, window=c.window, q_seg=q_seg, k_seg=k_seg,
                 k_len=c.k_len if c.key_padding else None)
