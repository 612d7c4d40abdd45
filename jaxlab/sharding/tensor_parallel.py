"""Tensor parallelism over the 'model' mesh axis (Megatron-LM, Shoeybi et al. 2019, Sec. 3).

The partition rules (jaxlab.sharding.rules) put attention heads and the MLP hidden width of the
weights on 'model'; the layers call these helpers to pin the matching activations there, so
XLA runs column-parallel qkv / MLP-in and row-parallel out / MLP-out matmuls (one all-reduce per
sublayer) instead of gathering weights. The helpers read the mesh in context
(`jax.sharding.use_abstract_mesh`, entered by jaxlab.train.step.train_step) and are the identity
without one, or when its 'model' axis has one device: a plain `model.apply` traces exactly the
program it traced before tensor parallelism existed.

Attention's fused qkv kernel stores its columns as [q heads | k heads | v heads]; a contiguous
split of that dimension over 'model' mixes q, k and v. `head_major` reorders the columns (a view,
not the stored parameter) so that model shard i holds q, k and v of heads [i H/M, (i+1) H/M), the
layout Megatron uses; `split_head_major` undoes it on the projection's output.
"""

import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

MODEL = "model"


def model_shards() -> int:
  """Devices on the 'model' axis of the mesh in context; 1 without a mesh or such an axis."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or MODEL not in mesh.axis_names:
    return 1
  return mesh.shape[MODEL]


def shard_dim(x: jax.Array, dim: int) -> jax.Array:
  """x with dimension `dim` split over 'model' (the others left to XLA) when the mesh in context
  has a 'model' axis of several devices dividing it; x itself otherwise."""
  m = model_shards()
  if m == 1 or x.shape[dim] % m:
    return x
  spec = [P.UNCONSTRAINED] * x.ndim
  spec[dim] = MODEL
  return jax.lax.with_sharding_constraint(x, P(*spec))


def _groups(x: jax.Array, sizes: Sequence[int], shards: int) -> list[jax.Array]:
  """The last axis, made of blocks of `sizes`, as one [..., shards, size / shards] per block."""
  parts = jnp.split(x, list(itertools.accumulate(sizes))[:-1], axis=-1)
  return [p.reshape(p.shape[:-1] + (shards, p.shape[-1] // shards)) for p in parts]


def head_major(w: jax.Array, sizes: Sequence[int], shards: int) -> jax.Array:
  """Reorders the last axis [block_0 | block_1 | ...] (e.g. q, k, v heads * head_dim) into
  `shards` contiguous groups, group i holding the i-th 1/shards of every block, and pins it on
  'model' (shard i = group i). Each block size must be divisible by `shards`."""
  w = jnp.concatenate(_groups(w, sizes, shards), axis=-1)
  return shard_dim(w.reshape(w.shape[:-2] + (math.prod(w.shape[-2:]),)), -1)


def split_head_major(y: jax.Array, sizes: Sequence[int], shards: int) -> list[jax.Array]:
  """The blocks of a `head_major` last axis, each back in its stored order (block j's columns
  c in [0, sizes[j])), their last axis still split over 'model'."""
  y = y.reshape(y.shape[:-1] + (shards, y.shape[-1] // shards))
  local = [s // shards for s in sizes]
  parts = jnp.split(y, list(itertools.accumulate(local))[:-1], axis=-1)
  return [shard_dim(p.reshape(p.shape[:-2] + (s,)), -1) for p, s in zip(parts, sizes)]
