"""Residual and init schemes for deep networks: pure functions the models call at init time.

  * Layer Index Rescaling (LIR; Owen et al. 2025, "Variance Control via Weight Rescaling in LLM
    Pre-training", Sec. 3.1): the weights of block l (l = index + 1) init with std sigma /
    sqrt(l), sigma = the parametrization's std (`lir_scale`; `init_scheme="lir"`).
  * Fixup (Zhang et al. 2019, "Fixup Initialization: Residual Learning Without Normalization",
    Sec. 3): the last layer of each residual branch and the classifier init 0, the other branch
    layers scaled by L^(-1/(2m-2)) for L branches of m layers (`fixup_scales`); scalar biases
    and a multiplier are model-side (ResNet, `init_scheme="fixup"`).
  * ReZero / SkipInit (Bachlechner et al. 2020; De & Smith 2020): a learned scalar branch gain
    initialised 0 (`branch_gain="rezero"`; the layer is jaxlab.models.norms.ScalarGain).
  * Mimetic attention init (Trockman & Kolter 2023, "Mimetic Initialization of Self-Attention
    Layers", Sec. 3): W_q W_k^T ~ alpha1 I + beta1 Z1 per head and W_v W_o ~ -alpha2 I + beta2 Z2,
    Z ~ N(0, 1/d), each product's factors taken from its SVD (`mimetic_inits`;
    `attention_init="mimetic"`). Naming here: alpha multiplies I, beta the noise (the paper uses
    the opposite letters); defaults alpha1 = beta1 = 0.7, alpha2 = beta2 = 0.4 (their ViT values).
  * Scaled weight standardization (NF-ResNets; Brock et al. 2021, "Characterizing signal
    propagation to close the performance gap in unnormalized ResNets", Eq. 5): `conv="ws"`.

Every function depends only on jax and jaxlab.param, never on jaxlab.models.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxlab.errors import UserError

INIT_SCHEMES = ("default", "lir")  # Transformer LM, ViT
RESNET_INIT_SCHEMES = ("default", "fixup", "lir")
BRANCH_GAINS = ("none", "rezero")
ATTENTION_INITS = ("default", "mimetic")
CONVS = ("standard", "ws")
MIMETIC = (0.7, 0.7, 0.4, 0.4)  # alpha1 (I), beta1 (noise) of W_q W_k^T; alpha2, beta2 of W_v W_o
WS_EPS = 1e-4  # floor of var * fan_in in scaled WS (as in NF-ResNets)

# kernel_init(key, shape, std) -> f32 array: replaces the N(0, std^2) draw of a weight.
KernelInit = Callable[[jax.Array, tuple[int, ...], float], jax.Array]


def check(key: str, value: str, valid: Sequence[str]) -> str:
  """`value` if it is one of `valid`, else a UserError naming config.model.<key>."""
  if value not in valid:
    raise UserError(f"unknown config.model.{key} {value!r}; valid: {', '.join(valid)}")
  return value


def lir_scale(layer: int) -> float:
  """LIR init-std multiplier 1/sqrt(l) of block `layer` (0-based, l = layer + 1)."""
  if layer < 0:
    raise ValueError(f"layer index must be >= 0, got {layer}")
  return 1.0 / math.sqrt(layer + 1)


def block_init_scale(init_scheme: str, layer: int) -> float:
  """Init-std multiplier of every weight in transformer block `layer` under `init_scheme`."""
  check("init_scheme", init_scheme, INIT_SCHEMES)
  return lir_scale(layer) if init_scheme == "lir" else 1.0


def fixup_scales(num_branches: int, branch_layers: int = 2) -> tuple[float, ...]:
  """Fixup init-std multipliers of the m = branch_layers weight layers of one residual branch in
  a network of L = num_branches branches: L^(-1/(2m-2)) for all but the last, 0 for the last."""
  if num_branches < 1 or branch_layers < 2:
    raise ValueError(f"Fixup needs >= 1 branches of >= 2 layers, got {num_branches}, "
                     f"{branch_layers}")
  s = num_branches ** (-1.0 / (2 * branch_layers - 2))
  return (s,) * (branch_layers - 1) + (0.0,)


def scaled_standardize(w: jax.Array, gain: jax.Array, std: float) -> jax.Array:
  """Scaled weight standardization (Brock et al. 2021, Eq. 5) of a kernel [..., fan_out]:
  gain * (W - mean) / (std(W) * sqrt(fan_in)) with mean and std over all but the last axis,
  var * fan_in floored at WS_EPS. The result is then multiplied by `std` * sqrt(fan_in), so its
  per-channel std is gain * `std` (the parametrization's init std; 1/sqrt(fan_in) under SP,
  which gives the paper's formula exactly)."""
  axes = tuple(range(w.ndim - 1))
  fan_in = math.prod(w.shape[:-1])
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True)
  w_hat = (w - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, WS_EPS))
  target = std * math.sqrt(fan_in)
  return gain * (w_hat if target == 1.0 else w_hat * target)


def mimetic_factors(key: jax.Array, d: int, rank: int, identity: float,
                    noise: float) -> tuple[jax.Array, jax.Array]:
  """(A [d, rank], B [d, rank]) with A B^T the best rank-min(rank, d) approximation of
  M = identity * I + noise * Z, Z ~ N(0, 1/d): M = U S V^T, A = U sqrt(S), B = V sqrt(S) (columns
  past d are zero)."""
  z = jax.random.normal(key, (d, d), jnp.float32) / math.sqrt(d)
  u, s, vt = jnp.linalg.svd(identity * jnp.eye(d, dtype=jnp.float32) + noise * z)
  r = min(rank, d)
  root = jnp.sqrt(s[:r])
  a, b = u[:, :r] * root, vt[:r].T * root
  pad = ((0, 0), (0, rank - r))
  return jnp.pad(a, pad), jnp.pad(b, pad)


def mimetic_inits(key: jax.Array, num_heads: int, head_dim: int,
                  constants: Sequence[float] = MIMETIC) -> tuple[KernelInit, KernelInit]:
  """(qkv_init, out_init) kernel_inits of a multi-head attention layer (fused qkv [d, 3 H Dh],
  out [H Dh, d]; needs num_kv_heads == num_heads) such that for each head h
  W_q^h W_k^h^T ~ alpha1 I + beta1 Z1_h (rank Dh) and W_v W_o ~ -alpha2 I + beta2 Z2 (rank H Dh).
  Both draw from the shared `key`, so the two Dense layers agree on W_v's factors.

  The factors are the *effective* weights under SP: each kernel_init multiplies them by
  std * sqrt(fan_in) (1 under SP/muP hidden weights), which the parametrization's forward
  multiplier undoes (e.g. u-muP: std 1, multiplier 1/sqrt(fan_in))."""
  a1, b1, a2, b2 = constants
  k_qk, k_vo = jax.random.split(key)
  H, Dh = num_heads, head_dim

  def qkv_init(_, shape, std):
    d = shape[0]
    if shape[1] != 3 * H * Dh:
      raise ValueError(f"mimetic init needs num_kv_heads == num_heads; qkv kernel {shape}")
    qs, ks = zip(*(mimetic_factors(jax.random.fold_in(k_qk, h), d, Dh, a1, b1)
                   for h in range(H)))
    v, _ = mimetic_factors(k_vo, d, H * Dh, -a2, b2)
    w = jnp.concatenate([*qs, *ks, v], axis=1)
    return w * (std * math.sqrt(d))

  def out_init(_, shape, std):
    _, o = mimetic_factors(k_vo, shape[1], H * Dh, -a2, b2)
    return o.T * (std * math.sqrt(shape[0]))

  return qkv_init, out_init
