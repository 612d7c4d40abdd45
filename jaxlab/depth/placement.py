"""Where the norms of a residual block go (config key `norm_placement`).

For a sublayer f (attention or MLP) and the parametrization's residual add x + r * g(x)
(`Parametrization.residual`, so muP / depth-muP / u-muP still apply):

  pre       x + f(N(x))                           (Xiong et al. 2020; GPT-2) - the default
  post      N(x + f(x))                           (Vaswani et al. 2017)
  peri      x + N_out(f(N_in(x)))                 (Peri-LN, Kim et al. 2025)
  mix       post for the first floor(mix_ratio * L) layers, pre after (Mix-LN, Li et al. 2024)
  lns       x + f(N(x) / sqrt(l)), l = layer index + 1   (LayerNorm Scaling, Sun et al. 2025,
            "The Curse of Depth in Large Language Models")
  deepnorm  N(alpha x + f(x)), alpha = (2L)^(1/4); value, attention-output and FFN weights init
            x beta = (8L)^(-1/4) (DeepNet, Wang et al. 2022, Table 1: decoder-only / encoder-only
            with L layers of two sublayers each); beta multiplies the parametrization's init std
            (LeCun under SP) where the paper uses Xavier; q and k keep gain 1
  none      x + f(x)                              (no norms inside blocks)

Post-type norms (post, deepnorm) act on the result of residual(); the DeepNorm skip scale is
applied as alpha * residual(x, f / alpha) = alpha x + f(x) (for SP). The final norm before the
readout is kept unless the last block already ends in a norm (post, deepnorm, and mix with
mix_ratio = 1), as in Post-LN BERT / DeepNet.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxlab.errors import UserError

PLACEMENTS = ("pre", "post", "peri", "mix", "lns", "deepnorm", "none")
MIX_RATIO = 0.25  # Mix-LN default (Li et al. 2024)


@dataclasses.dataclass(frozen=True)
class BlockNorms:
  """One block's norm layout: a norm on each branch input (norm_in, output x in_scale), on each
  branch output (norm_out), after each residual add (norm_post); the skip multiplied by
  skip_scale before a post norm; value / attention-output / FFN init std x init_scale."""

  kind: str = "pre"
  norm_in: bool = True
  norm_out: bool = False
  norm_post: bool = False
  in_scale: float = 1.0
  skip_scale: float = 1.0
  init_scale: float = 1.0


def check(placement: str) -> str:
  if placement not in PLACEMENTS:
    raise UserError(f"unknown config.model.norm_placement {placement!r}; valid: "
                    f"{', '.join(PLACEMENTS)}")
  return placement


def mix_post_layers(num_layers: int, mix_ratio: float = MIX_RATIO) -> int:
  """Number of leading Post-LN layers in Mix-LN: floor(mix_ratio * L) (with a 1e-9 guard so that
  e.g. 0.29 * 100 gives 29)."""
  if not 0.0 <= mix_ratio <= 1.0:
    raise UserError(f"config.model.mix_ratio must be in [0, 1], got {mix_ratio!r}")
  return int(math.floor(mix_ratio * num_layers + 1e-9))


def deepnorm_constants(num_layers: int) -> tuple[float, float]:
  """DeepNet's (alpha, beta) = ((2N)^(1/4), (8N)^(-1/4)) for N layers (Wang et al. 2022)."""
  if num_layers < 1:
    raise ValueError(f"DeepNorm needs num_layers >= 1, got {num_layers}")
  return (2.0 * num_layers) ** 0.25, (8.0 * num_layers) ** -0.25


def block_norms(placement: str, layer: int, num_layers: int,
                mix_ratio: float = MIX_RATIO) -> BlockNorms:
  """The BlockNorms of block `layer` (0-based) in a stack of `num_layers` under `placement`."""
  check(placement)
  if placement == "mix":
    placement = "post" if layer < mix_post_layers(num_layers, mix_ratio) else "pre"
  if placement == "pre":
    return BlockNorms()
  if placement == "post":
    return BlockNorms("post", norm_in=False, norm_post=True)
  if placement == "peri":
    return BlockNorms("peri", norm_out=True)
  if placement == "lns":
    return BlockNorms("lns", in_scale=1.0 / math.sqrt(layer + 1))
  if placement == "deepnorm":
    alpha, beta = deepnorm_constants(num_layers)
    return BlockNorms("deepnorm", norm_in=False, norm_post=True, skip_scale=alpha,
                      init_scale=beta)
  return BlockNorms("none", norm_in=False)


def has_final_norm(placement: str, num_layers: int, mix_ratio: float = MIX_RATIO) -> bool:
  """Whether a norm goes before the readout: unless the last block already ends in one."""
  if num_layers == 0:
    check(placement)
    return True
  return not block_norms(placement, num_layers - 1, num_layers, mix_ratio).norm_post


def _scale(x: jax.Array, s: float) -> jax.Array:
  return x if s == 1.0 else x * jnp.asarray(s, x.dtype)


Fn = Callable[[jax.Array], jax.Array]


def sublayer(spec: BlockNorms, x: jax.Array, branch: Fn, *, residual: Callable[[jax.Array, Fn],
             jax.Array], norm: Callable[[str], Fn], prefix: str, gain: Fn | None = None
             ) -> jax.Array:
  """One residual update of a block laid out by `spec`.

  branch: the sublayer f; residual(x, g): the parametrization's add x + r * g(x); norm(name):
  a fresh norm module named `name` (called inside the block's compact method); gain: applied
  last inside the branch (ReZero). Norms are named <prefix>_norm (input), <prefix>_out_norm
  (Peri-LN output) and <prefix>_post_norm (after the add).
  """

  def f(y):
    if spec.norm_in:
      y = _scale(norm(f"{prefix}_norm")(y), spec.in_scale)
    h = branch(y)
    if spec.norm_out:
      h = norm(f"{prefix}_out_norm")(h)
    return h if gain is None else gain(h)

  if spec.skip_scale == 1.0:
    x = residual(x, f)
  else:
    a = spec.skip_scale
    x = _scale(residual(x, lambda y: _scale(f(y), 1.0 / a)), a)
  return norm(f"{prefix}_post_norm")(x) if spec.norm_post else x
