"""Per-layer statistics logged during training (nanodo habit): rms of params, grads, updates."""

import jax
import jax.numpy as jnp


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def per_layer_rms(tree, prefix: str) -> dict[str, jax.Array]:
  """{'<prefix>/<param path>': rms} for every leaf, e.g. 'rms_grads/block_0/attn/qkv/kernel'."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {f"{prefix}/{_path_name(path)}": rms(leaf) for path, leaf in leaves}
