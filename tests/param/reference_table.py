"""Per-parameter scales of each parametrization as the reference implementations define them.

Written from the references, not from jaxlab/param: a parameter is described the way the
references see it, by its path and shapes (microsoft/mup's infshape: which axes grow with width,
found by comparing the parameter's shape in the wide model with the base model's), never by a
jaxlab role. `expected(name, ...)` returns one row:

  init_std   std of the initial weights (biases 0 and norm gains 1 are checked exactly)
  forward    constant the layer multiplies its weight op's output by (kernels and lookups)
  adam_lr    multiplier of the global LR under Adam/AdamW
  sgd_lr     multiplier of the global LR under SGD (None: the parametrization has no SGD rule)
  wd         per-step decay as a multiple of lr * weight_decay
  adam_eps   multiplier of Adam's epsilon

Sources, by row:
  SP      PyTorch/Flax defaults (LeCun normal init, fan_in = all axes but the last): every scale
          1. jaxlab's SP decays every parameter (optax.adamw without a mask).
  muP     microsoft/mup 1.0.0: MuReadout (forward x 1/m; init keeps the base-width std),
          MuAdam / MuAdamW (ninf == 2: LR / m and weight_decay x m, so the decay per step is
          lr * wd; everything else x 1), MuSGD (ninf == 1: LR x m, weight_decay / m; ninf == 2:
          LR / (fan_in mult / fan_out mult) = 1; ninf == 0, e.g. the readout bias: x 1);
          epsilon untouched. Tensor Programs V, Table 8.
  depth-muP / CompleteP   nanoGPT-mup `completep` branch (Dey et al. 2025), depth_alpha_exp =
          alpha, depth multiplier L/L_base: residual branches x (L/L_base)^-alpha; hidden
          weights LR (1/m)(L/L_base)^(alpha-1) with weight_decay x m (decay lr*wd*(L/L_base)^
          (alpha-1)); norm gains and biases inside the blocks LR (L/L_base)^(alpha-1) (the
          reference does not decay them; jaxlab decays them with the same depth scale);
          embedding, final norm, readout x 1; one epsilon x (1/m)(L/L_base)^-alpha for all.
          SGD: the reference is Adam-only; jaxlab keeps MuSGD's width rules.
  u-muP   graphcore unit_scaling (optim.lr_scale_func_adam, parameter.mup_type,
          DepthSequential's mup_scaling_depth = L) and Blake et al. 2024, Table 2: every weight
          init N(0, 1); weight ops x 1/sqrt(fan_in), the readout x 1/fan_in, lookups x 1; Adam LR
          weights fan_in^-1/2, readout, biases and norms x 1, and every parameter of the
          residual stack a further L^-1/2; independent weight decay; epsilon untouched.
          Lookup tables: the reference's fan_in of an embedding is d_model (LR d_model^-1/2),
          jaxlab's default keeps x 1 (embedding_lr='mup'; 'unit_scaling' is the reference).
          Conv kernels (which the reference's _get_fan_in rejects) use fan_in = kh * kw * c_in.
"""

import math
import re
from typing import NamedTuple

BLOCK = re.compile(r"(^|/)(\w+_)?block_\d+/")
LOOKUPS = ("embed/embedding", "pos_embed/embedding")


class Row(NamedTuple):
  init_std: float | None
  forward: float | None
  adam_lr: float
  sgd_lr: float | None
  wd: float
  adam_eps: float


class Param(NamedTuple):
  """A parameter as the references see it."""

  path: str  # e.g. 'block_3/attn/qkv/kernel'
  shape: tuple
  ninf: int  # axes larger than in the base model (microsoft/mup's infshape.ninf())
  base_fan_in: int  # the base model's fan_in of this parameter

  @property
  def leaf(self) -> str:
    return self.path.rsplit("/", 1)[-1]

  @property
  def fan_in(self) -> int:
    return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

  @property
  def is_readout(self) -> bool:
    return self.path.startswith("readout/")

  @property
  def is_lookup(self) -> bool:
    return self.path in LOOKUPS

  @property
  def in_block(self) -> bool:
    return bool(BLOCK.search(self.path))

  @property
  def is_weight(self) -> bool:
    """Weights (drawn at init); biases start at 0 and norm gains / scalar gains at 1."""
    return self.leaf in ("kernel", "embedding", "cls")


def _sp_std(p: Param) -> float:
  return 1.0 / math.sqrt(p.fan_in)


def expected(name: str, p: Param, *, m: float, depth_mult: float, depth: int,
             opts: dict | None = None) -> Row:
  """The reference's row for parameter p of a model at width multiplier m, depth multiplier
  depth_mult (L / L_base) and depth L (residual blocks)."""
  opts = opts or {}
  forward_kernel = p.leaf == "kernel" or p.is_lookup
  if name == "sp":
    return Row(_sp_std(p) if p.is_weight else None, 1.0 if forward_kernel else None, 1.0, 1.0,
               1.0, 1.0)
  if name in ("mup", "depth_mup", "completep"):
    std = None
    if p.is_weight:
      std = (1.0 / math.sqrt(p.base_fan_in)) if p.is_readout else _sp_std(p)
    forward = None
    if forward_kernel:
      forward = 1.0 / m if p.is_readout else 1.0
    adam = 1.0 / m if p.ninf == 2 else 1.0
    sgd = m if p.ninf == 1 else 1.0
    if name == "mup":
      return Row(std, forward, adam, sgd, 1.0, 1.0)
    alpha = opts.get("alpha", 0.5 if name == "depth_mup" else 1.0)
    depth_lr = depth_mult ** (alpha - 1.0) if p.in_block else 1.0
    return Row(std, forward, adam * depth_lr, sgd, depth_lr, depth_mult ** -alpha / m)
  if name == "umup":
    std = 1.0 if p.is_weight else None
    forward = None
    if p.is_lookup:
      forward = 1.0
    elif p.leaf == "kernel":
      forward = 1.0 / p.fan_in if p.is_readout else 1.0 / math.sqrt(p.fan_in)
    depth_lr = depth ** -0.5 if (p.in_block and depth) else 1.0
    if p.is_lookup:
      d_model = p.shape[-1]
      adam = d_model ** -0.5 if opts.get("embedding_lr") == "unit_scaling" else 1.0
    elif p.leaf == "kernel" and not p.is_readout:
      adam = p.fan_in ** -0.5
    else:  # readout ('output'), biases, norms, 1-D parameters such as ViT's cls ('norm')
      adam = 1.0
    return Row(std, forward, adam * depth_lr, None, 1.0, 1.0)
  raise ValueError(f"no reference row for parametrization {name!r}")
