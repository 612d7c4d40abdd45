"""Block-wise quantized optimizer state (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
Quantization"; Li et al. 2023, "Memory Efficient Optimizers with 4-bit States").

Every floating-point leaf of the inner state with >= min_size elements is stored as `Quantized`:
the flattened leaf, zero-padded to a multiple of block_size, in blocks of block_size elements,
each with one f32 absmax scale. Codes are linear in u = sign(x) sqrt(|x| / absmax) (a square-root
map, a simple stand-in for the papers' dynamic maps: finer steps near 0, where Adam divides by
sqrt(v); with random gradients it cut the 8-bit Adam trajectory error ~3x vs a linear map):

  signed block (some x < 0):  code = round(u * c), u ~ code / c, c = 2^(bits-1) - 1
  non-negative block (e.g. Adam's second moment): the whole unsigned range and no zero point
    (Li et al. 2023, Sec. 4.1): code = clip(round(u * 2^bits) - 1, 0, 2^bits - 1),
    u ~ (code + 1) / 2^bits, so no entry of a nonzero block dequantizes to 0 (which would turn
    m / (sqrt(v) + eps) into m / eps); the scale is stored negated to flag the block.

bits=8: one int8 code per element (unsigned codes offset by -128). bits=4: two 4-bit codes per
byte (signed codes offset by +8), packed into int8. update(): dequantize -> inner.update ->
quantize; the inner transform never sees codes. Memory: state_bytes.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


@jax.tree_util.register_pytree_node_class
class Quantized:
  """codes: int8 [n_blocks, block_size] (bits=8) or [n_blocks, block_size // 2] (bits=4, packed);
  scales: f32 [n_blocks, 1], absmax, negative for a non-negative (unsigned) block. shape, dtype,
  bits: the original leaf's (static)."""

  def __init__(self, codes, scales, shape, dtype, bits):
    self.codes, self.scales, self.shape, self.dtype, self.bits = codes, scales, shape, dtype, bits

  def tree_flatten(self):
    return (self.codes, self.scales), (self.shape, self.dtype, self.bits)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)


def quantize(x: jax.Array, bits: int, block_size: int) -> Quantized:
  """Block-wise absmax quantization of x (module docstring)."""
  size = x.size
  blocks = jnp.pad(x.reshape(-1).astype(jnp.float32), (0, -size % block_size))
  blocks = blocks.reshape(-1, block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=1, keepdims=True)
  unsigned = jnp.min(blocks, axis=1, keepdims=True) >= 0
  unit = blocks / jnp.where(absmax > 0, absmax, 1.0)
  unit = jnp.sign(unit) * jnp.sqrt(jnp.abs(unit))  # codes are linear in sqrt(|x| / absmax)
  c = 2 ** (bits - 1) - 1
  signed_codes = jnp.round(unit * c)  # [-c, c]
  unsigned_codes = jnp.clip(jnp.round(unit * 2**bits) - 1, 0, 2**bits - 1)  # [0, 2^bits - 1]
  # Offsets into the stored range: int8 [-128, 127] for 8 bits, nibbles [0, 15] for 4 bits.
  if bits == 8:
    codes = jnp.where(unsigned, unsigned_codes - 128, signed_codes).astype(jnp.int8)
  else:
    nib = jnp.where(unsigned, unsigned_codes, signed_codes + 8).astype(jnp.uint8)
    codes = jax.lax.bitcast_convert_type(nib[:, 0::2] * 16 + nib[:, 1::2], jnp.int8)
  return Quantized(codes, jnp.where(unsigned, -absmax, absmax), x.shape, x.dtype, bits)


def dequantize(q: Quantized) -> jax.Array:
  """The leaf that quantize(x) approximates, in x's shape and dtype."""
  bits, unsigned, absmax = q.bits, q.scales < 0, jnp.abs(q.scales)
  if bits == 8:
    raw = q.codes.astype(jnp.float32)
    signed_codes, unsigned_codes = raw, raw + 128
  else:
    b = jax.lax.bitcast_convert_type(q.codes, jnp.uint8)
    nib = jnp.stack([b // 16, b % 16], axis=-1).reshape(b.shape[0], -1).astype(jnp.float32)
    signed_codes, unsigned_codes = nib - 8, nib
  c = 2 ** (bits - 1) - 1
  unit = jnp.where(unsigned, (unsigned_codes + 1) / 2**bits, signed_codes / c)
  unit = jnp.sign(unit) * jnp.square(unit)
  size = int(np.prod(q.shape))
  return (unit * absmax).reshape(-1)[:size].reshape(q.shape).astype(q.dtype)


def quantize_state(inner: optax.GradientTransformation, bits: int = 8, block_size: int = 256,
                   min_size: int = 4096) -> optax.GradientTransformation:
  """inner with its large floating-point state leaves stored as block-wise `bits`-bit codes."""
  if bits not in (4, 8):
    raise ValueError(f"bits={bits}; supported: 4, 8")
  if bits == 4 and block_size % 2:
    raise ValueError(f"block_size={block_size} must be even for 4-bit packing")

  def pack(state):
    def leaf(x):
      big = jnp.issubdtype(x.dtype, jnp.floating) and x.size >= min_size
      return quantize(x, bits, block_size) if big else x
    return jax.tree.map(leaf, state)

  def unpack(state):
    is_q = lambda x: isinstance(x, Quantized)
    return jax.tree.map(lambda x: dequantize(x) if is_q(x) else x, state, is_leaf=is_q)

  def init(params):
    return pack(inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_state = inner.update(updates, unpack(state), params)
    return new_updates, pack(new_state)

  return optax.GradientTransformation(init, update)


def state_bytes(state: Any) -> int:
  """Bytes held by the arrays of an optimizer state (codes and scales for quantized leaves)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
