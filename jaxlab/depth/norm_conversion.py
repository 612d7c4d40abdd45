"""Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm conversion of a Transformer LM with identical outputs
(Jiang et al. 2023, "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN
Transformers", Sec. 3).

Every branch of a Pre-LN model reads its input through a LayerNorm, which ignores the mean of
the residual stream x. So (1) centring what is written to the stream (the token and position
embeddings and the output projections attn/out and mlp/down: each row of the kernel and the bias
minus its mean, W <- W (I - 11^T/d)) changes no branch input and leaves the final stream
x - mean(x); on that zero-mean stream LayerNorm = RMSNorm (same epsilon). (2) The gain g and
bias b of each block norm fold into the linear layer it feeds (attn/qkv, mlp/up):
(n * g + b) W + c = n (diag(g) W) + (b W + c). (3) For CRMSNorm the zero-mean d-vector is stored
as its first d-1 coordinates (the last is minus their sum): writers keep their first d-1 output
columns, readers fold the implied coordinate in, W <- W[:-1] - W[-1] (Jiang et al., Eq. 10).

The final norm feeds the readout, which has no bias: the Pre-RMSNorm model keeps its gain and
bias in its final RMSNorm; the Pre-CRMSNorm model (affine-free norms) folds the gain into the
readout and, with use_bias, the bias into the readout bias the crmsnorm model then has (see
jaxlab.models.transformer). Tied embeddings are untied (the stream embedding is centred but the
readout must not be). Both functions take and return unboxed params and a model config mapping
(the returned config builds the converted model). Exact for any parametrization whose forward
multipliers do not depend on fan-in (SP, muP, depth-muP); CRMSNorm changes the stream width to
d-1, so not for u-muP / NTK there.
"""

import copy
from typing import Any, Mapping

import jax.numpy as jnp

Params = dict[str, Any]


def center(w: jnp.ndarray) -> jnp.ndarray:
  """w - mean over the last (output) axis: a writer whose outputs are zero-mean."""
  return w - jnp.mean(w, axis=-1, keepdims=True)


def fold(norm: Mapping[str, Any], dense: Mapping[str, Any]) -> Params:
  """The Dense reading norm(x) * g + b, with g, b folded in: kernel diag(g) W, bias b W + c."""
  kernel = dense["kernel"]
  out = {"kernel": norm["scale"][:, None] * kernel} if "scale" in norm else {"kernel": kernel}
  if "bias" in dense or "bias" in norm:
    bias = dense.get("bias", jnp.zeros(kernel.shape[1], kernel.dtype))
    out["bias"] = bias + norm["bias"] @ kernel if "bias" in norm else bias
  return out


def compress_reader(kernel: jnp.ndarray) -> jnp.ndarray:
  """Kernel [d, n] reading a zero-mean d-vector -> [d-1, n] reading its first d-1 coordinates."""
  return kernel[:-1] - kernel[-1:]


def _config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  for key, valid in (("name", "transformer"), ("norm", "layernorm"), ("norm_placement", "pre")):
    if cfg.get(key, valid) != valid:
      raise ValueError(f"norm conversion needs a Pre-LN TransformerLM: config.model.{key} must "
                       f"be {valid!r}, got {cfg[key]!r}")
  if "num_layers" not in cfg:
    raise ValueError("norm conversion needs config.model.num_layers")
  return cfg


def _centred(params: Params, num_layers: int, compress: bool) -> Params:
  """Copy of params with every stream writer centred (and compressed to d-1 outputs)."""
  out = copy.deepcopy(dict(params))
  cut = (lambda w: center(w)[..., :-1]) if compress else center
  for table in ("embed", "pos_embed"):
    if table in out:
      out[table] = {"embedding": cut(out[table]["embedding"])}
  for i in range(num_layers):
    block = out[f"block_{i}"]
    for branch, proj in (("attn", "out"), ("mlp", "down")):
      block[branch][proj] = {k: cut(v) for k, v in block[branch][proj].items()}
  return out


def _readout_kernel(params: Params, tied: bool) -> jnp.ndarray:
  return params["embed"]["embedding"].T if tied else params["readout"]["kernel"]


def to_pre_rmsnorm(params: Params, model_cfg: Mapping[str, Any]) -> tuple[Params, dict]:
  """(params, config) of the Pre-RMSNorm LM computing the same function as the Pre-LN one.

  Block norm gains/biases are folded into qkv and up (the RMSNorms keep gain 1, bias 0); the
  final RMSNorm keeps the Pre-LN final gain and bias."""
  cfg = _config(model_cfg)
  L, tied = int(cfg["num_layers"]), bool(cfg.get("tie_embeddings", False))
  out = _centred(params, L, compress=False)
  for i in range(L):
    block = out[f"block_{i}"]
    for branch, reader in (("attn", "qkv"), ("mlp", "up")):
      norm = block[f"{branch}_norm"]
      block[branch][reader] = fold(norm, block[branch][reader])
      block[f"{branch}_norm"] = {k: (jnp.ones_like(v) if k == "scale" else jnp.zeros_like(v))
                                 for k, v in norm.items()}
  out["readout"] = {"kernel": _readout_kernel(params, tied)}
  return out, dict(cfg, norm="rmsnorm", tie_embeddings=False)


def to_pre_crmsnorm(params: Params, model_cfg: Mapping[str, Any]) -> tuple[Params, dict]:
  """(params, config) of the Pre-CRMSNorm LM (residual stream d-1 wide, norm='crmsnorm')
  computing the same function as the Pre-LN one; every norm gain/bias is folded into the next
  linear layer, the final bias into the readout bias (use_bias models)."""
  cfg = _config(model_cfg)
  L, tied = int(cfg["num_layers"]), bool(cfg.get("tie_embeddings", False))
  out = _centred(params, L, compress=True)
  for i in range(L):
    block = out[f"block_{i}"]
    for branch, reader in (("attn", "qkv"), ("mlp", "up")):
      dense = fold(block.pop(f"{branch}_norm"), block[branch][reader])
      block[branch][reader] = dict(dense, kernel=compress_reader(dense["kernel"]))
  readout = fold(out.pop("final_norm"), {"kernel": _readout_kernel(params, tied)})
  out["readout"] = dict(readout, kernel=compress_reader(readout["kernel"]))
  return out, dict(cfg, norm="crmsnorm", tie_embeddings=False)
