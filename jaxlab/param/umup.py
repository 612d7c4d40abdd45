"""u-muP: the unit-scaled maximal update parametrization (Blake et al. 2024, "u-muP: The
Unit-Scaled Maximal Update Parametrization"), built on unit scaling (Blake et al. 2023).

Every weight is initialised N(0, 1) and the scale moves into the ops, with separate forward and
backward scales (jaxlab.param.unit_scaling) chosen so that at initialisation every layer's output
and every gradient has RMS ~1 (for unit-RMS inputs and output cotangents):

  hidden / input weight ops:  forward x 1/sqrt(fan_in); input cotangent x 1/sqrt(fan_in) (the
      'to_output_scale' constraint, so the gradient w.r.t. activations stays the true one;
      it then has RMS sqrt(fan_out / fan_in)); weight cotangent x 1/sqrt(batch).
  readout: forward x 1/fan_in (the muP readout); input cotangent x 1/sqrt(fan_out).
  embedding lookups: forward x 1; table cotangent x sqrt(rows / lookups).
  biases, norm gains: cotangent x 1/sqrt(batch).
  nonlinearities: multiplied by 1 / sqrt(rms(f) * rms(f')) under a unit Gaussian (geometric
      mean of the forward and backward unit scales).
  attention: logits q.k / head_dim (muP), output and q/k/v cotangents scaled by the u-muP
      estimate of the attention output's RMS (log-interpolated between the uniform-attention
      value sqrt(H_s/s) (causal; H_s the harmonic number, the paper's log(s)/s) or sqrt(1/s)
      and 1).
  residual branches: x_{k+1} = a x_k + b f(x_k), a = 1/sqrt(1 + tau_k^2), b = tau_k a, with b
      applied in the forward pass after the branch and in the backward pass before it, and
      tau_k = alpha / sqrt(L + k alpha^2) for the k-th branch of an L-block stack: the embedding
      counts as much as all branches of one kind and every branch contributes equally (u-muP,
      Appendix G, with residual_mult alpha); this is depth-muP's 1/sqrt(L) in unit-scaled form.

Adam learning-rate scales (absolute; u-muP needs no base model; graphcore unit_scaling's
`lr_scale_func_adam`): every weight x 1/sqrt(fan_in), biases, gains and the readout x 1, and
every parameter inside the L residual blocks (weights, norms and biases) a further x 1/sqrt(L)
(its `mup_scaling_depth`); a model without residual blocks (the MLP) has no depth factor. Every
weight then moves its layer's output by ~eta per step whatever the width. Weight decay
(wd_convention): 'independent' (default) decays every parameter by lr * wd per step whatever its
LR scale (unit_scaling's independent_weight_decay also divides by the peak LR: its decay is wd
per step; ours keeps optax's lr * wd); 'coupled': lr_scale * lr * wd. Adam epsilon is not
rescaled (gradients are unit-scaled).

Differences from the reference, each deliberate:
  * embedding_lr='mup' (default): lookup tables (token and position embeddings) keep LR x 1, as
    in muP; the reference treats them as weights with fan_in = d_model (x 1/sqrt(d_model), the
    paper's empirical rule): embedding_lr='unit_scaling'.
  * biases are added after the op's output scale (y = x W / sqrt(fan_in) + b), the reference adds
    them before it ((x W + b) / sqrt(fan_in)): with LR x 1 an unscaled bias moves its output by
    ~eta per step at every width, the u-muP principle; inside the scale its step would shrink as
    1/sqrt(fan_in).
  * norm gains are kept (trainable); the loss gradient is not rescaled (Adam is invariant to it).
SGD is not supported (the authors' own SGD rules were later found wrong). Unlike the other
parametrizations u-muP is not SP at any width: its init is unit-scaled.
"""

import dataclasses
import math
from typing import Callable

import jax

from jaxlab.errors import UserError
from jaxlab.param import roles
from jaxlab.param.base import OpScales, Parametrization, check_wd_convention
from jaxlab.param.meta import ParamInfo
from jaxlab.param.unit_scaling import gaussian_rms, scale_bwd, scale_fwd


EMBEDDING_LRS = ("mup", "unit_scaling")


@dataclasses.dataclass(frozen=True)
class UMuP(Parametrization):
  name: str = "umup"
  residual_mult: float = 1.0
  attention_mult: float = 1.0
  embedding_lr: str = "mup"
  wd_convention: str = "independent"

  def __post_init__(self):
    check_wd_convention(self.wd_convention)
    if self.embedding_lr not in EMBEDDING_LRS:
      raise UserError(f"config.param.embedding_lr={self.embedding_lr!r}; valid: "
                      f"{', '.join(EMBEDDING_LRS)} (mup: x 1; unit_scaling: x 1/sqrt(d_model), "
                      "the reference's rule)")

  def init_std(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    return 0.0 if role in (roles.BIAS, roles.NORM) else 1.0

  def forward_multiplier(self, role: str, fan_in: int, fan_out: int) -> float:
    roles.check(role)
    if role in (roles.INPUT, roles.HIDDEN):
      return 1.0 / math.sqrt(fan_in)
    if role == roles.READOUT:
      return 1.0 / fan_in
    return 1.0

  def op_scales(self, role: str, fan_in: int, fan_out: int, batch: int) -> OpScales:
    out = self.forward_multiplier(role, fan_in, fan_out)
    grad_param = 1.0 / math.sqrt(batch)
    if role == roles.READOUT:
      return OpScales(out, 1.0 / math.sqrt(fan_out), grad_param)
    return OpScales(out, out, grad_param)

  def lookup_scales(self, num_rows: int, features: int, lookups: int) -> OpScales:
    return OpScales(1.0, 1.0, math.sqrt(num_rows / lookups))

  def attention_scale(self, head_dim: int) -> float:
    return self.attention_mult / head_dim

  def attention_output_scale(self, seq_len: int, head_dim: int, causal: bool) -> float:
    # RMS of the output under uniform attention over independent unit values: causal query i
    # averages i + 1 of them, so the mean variance is H_s / s (harmonic number; the paper
    # uses log(s) / s); without a mask 1 / s.
    harmonic = sum(1.0 / i for i in range(1, seq_len + 1)) if causal else 1.0
    uniform = math.sqrt(harmonic / seq_len)
    weight = 1.0 / (1.0 + 4.0 * head_dim / self.attention_mult**2)  # -> 1 as logits sharpen
    return 1.0 / math.exp((1.0 - weight) * math.log(uniform))

  def activation_scale(self, f: Callable[[jax.Array], jax.Array]) -> float:
    return 1.0 / math.sqrt(gaussian_rms(f) * gaussian_rms(f, derivative=True))

  def residual_tau(self, index: int, num_layers: int) -> float:
    a = self.residual_mult
    return a / math.sqrt(num_layers + index * a * a)

  def residual(self, x: jax.Array, branch: Callable[[jax.Array], jax.Array], *, layer: int,
               num_layers: int, branch_index: int = 0, branches_per_layer: int = 1,
               shortcut: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    tau = self.residual_tau(layer * branches_per_layer + branch_index, num_layers)
    skip, res = 1.0 / math.sqrt(1.0 + tau * tau), tau / math.sqrt(1.0 + tau * tau)
    s = x if shortcut is None else shortcut(x)
    return s * skip + scale_fwd(branch(scale_bwd(x, res)), res)

  def lr_scale(self, info: ParamInfo, family: str = "adam") -> float:
    role = roles.check(info.role)
    if family != "adam":
      raise UserError(f"config.param.name='umup' prescribes Adam-family learning rates only "
                      f"(got optimizer family {family!r}); config.optim.name: use adamw, adam, "
                      "adam_atan2 or lion")
    depth = 1.0 / math.sqrt(self.depth) if info.in_block and self.depth else 1.0
    if role in (roles.BIAS, roles.NORM, roles.READOUT):
      return depth
    if role == roles.INPUT and info.names[:1] in (("vocab",), ("position",)):  # a lookup table
      return depth / math.sqrt(info.fan_out) if self.embedding_lr == "unit_scaling" else depth
    return depth / math.sqrt(info.fan_in)

  def weight_decay_scale(self, info: ParamInfo, family: str = "adam") -> float:
    return self.lr_scale(info, family) if self.wd_convention == "coupled" else 1.0
