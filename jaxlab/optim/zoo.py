"""Optimizer zoo: training algorithms as optax GradientTransformation factories.

Each entry of OPTIMIZERS is an Algorithm: `make(learning_rate, **hparams)` (learning_rate a
float or an optax schedule), `defaults` (the hyperparameters `make` takes, with their default
values, read off its signature), `search_space` (AlgoPerf-style: hyperparameter -> (low, high,
"log" | "linear"); learning_rate always present) and a one-line `source`. Entries wrap optax /
optax.contrib where it has the algorithm; weight decay is decoupled and multiplied by the
learning rate (optax's convention: p <- p - lr * (update + wd * p)) unless `source` says otherwise.
"""

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from jaxlab.errors import UserError
from jaxlab.optim.adam_atan2 import adam_atan2 as _adam_atan2_tx


class Algorithm(NamedTuple):
  make: Callable[..., optax.GradientTransformation]
  defaults: dict
  search_space: dict
  source: str


def scale_by_nadam(b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """NAdam as in AlgoPerf's NAdamW baseline (Dozat 2016, in the form of Choi et al. 2019,
  Table 1): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; update =
  ((b1 m + (1-b1) g) / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).

  optax.scale_by_adam(nesterov=True) differs in the bias correction of the momentum term
  (b1 m / (1-b1^(t+1)) + (1-b1) g / (1-b1^t)), hence this transform."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_int32_increment(state.count)
    mu_hat = optax.tree.bias_correction(optax.tree.update_moment(updates, mu, b1, 1), b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return out, optax.ScaleByAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def _adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _nadamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return optax.chain(scale_by_nadam(b1, b2, eps), optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def _sgd_nesterov(learning_rate, momentum=0.9, weight_decay=0.0):
  # optax.trace(nesterov=True): v = mu v + g, update g + mu v; then -lr (that + wd p).
  return optax.chain(optax.trace(decay=momentum, nesterov=True),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def _lamb(learning_rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0):
  return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _lars(learning_rate, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=0.0,
          nesterov=False):
  return optax.lars(learning_rate, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                    eps=eps, momentum=momentum, nesterov=nesterov)


def _lion(learning_rate, b1=0.9, b2=0.99, weight_decay=0.0):
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _adafactor(learning_rate, decay_rate=0.8, clipping_threshold=1.0, weight_decay=0.0,
               min_dim_size_to_factor=128, multiply_by_parameter_scale=True):
  """No first moment (the paper's memory-saving default): `momentum` is left out so that a
  config's SGD momentum key cannot switch it on."""
  return optax.adafactor(learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                         decay_rate=decay_rate, clipping_threshold=clipping_threshold,
                         multiply_by_parameter_scale=multiply_by_parameter_scale,
                         weight_decay_rate=weight_decay)  # may be traced: no `or None`


def _muon(learning_rate, beta=0.95, ns_steps=5, weight_decay=0.0, nesterov=True, adam_b1=0.9,
          adam_b2=0.999, adam_weight_decay=0.0):
  """2D params: Newton-Schulz-orthogonalised Nesterov momentum (weight_decay); every other param
  (vectors, conv kernels, embeddings of ndim != 2) goes through AdamW (adam_b1, adam_b2,
  adam_weight_decay) at the same learning rate."""
  return contrib.muon(learning_rate, beta=beta, ns_steps=ns_steps, weight_decay=weight_decay,
                      nesterov=nesterov, adam_b1=adam_b1, adam_b2=adam_b2,
                      adam_weight_decay=adam_weight_decay)


def _schedule_free_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                         weight_lr_power=2.0):
  """Meant for a constant learning rate after warmup (the schedule is replaced by averaging);
  evaluate at eval_params(...), not at the training params."""
  return contrib.schedule_free_adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                                     weight_decay=weight_decay, weight_lr_power=weight_lr_power)


def _adam_atan2(learning_rate, b1=0.9, b2=0.999, a=1.27, b=1.0, weight_decay=0.0):
  return _adam_atan2_tx(learning_rate, b1=b1, b2=b2, a=a, b=b, weight_decay=weight_decay)


def _shampoo(learning_rate, b1=0.9, b2=0.999, eps=1e-8, matrix_eps=1e-6, block_size=128,
             precondition_every=10, weight_decay=0.0):
  from jaxlab.optim.shampoo import shampoo  # pylint: disable=import-outside-toplevel
  return shampoo(learning_rate, b1=b1, b2=b2, eps=eps, matrix_eps=matrix_eps,
                 block_size=block_size, precondition_every=precondition_every,
                 weight_decay=weight_decay)


def _soap(learning_rate, b1=0.95, b2=0.95, eps=1e-8, block_size=128, precondition_every=10,
          weight_decay=0.0):
  from jaxlab.optim.soap import soap  # pylint: disable=import-outside-toplevel
  return soap(learning_rate, b1=b1, b2=b2, eps=eps, block_size=block_size,
              precondition_every=precondition_every, weight_decay=weight_decay)


def _defaults(fn: Callable) -> dict:
  return {k: p.default for k, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def _algo(fn: Callable, source: str, **space) -> Algorithm:
  return Algorithm(fn, _defaults(fn), space, source)


LR = (1e-4, 1e-2, "log")
WD = (1e-4, 0.5, "log")
B1 = (0.8, 0.99, "linear")
B2 = (0.9, 0.9999, "linear")

OPTIMIZERS: dict[str, Algorithm] = {
    "adamw": _algo(_adamw, "Loshchilov & Hutter 2019, AdamW; wraps optax.adamw",
                   learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "nadamw": _algo(_nadamw, "AlgoPerf NAdamW baseline (Dozat 2016 Nesterov Adam + decoupled "
                    "decay); own scale_by_nadam (optax.nadamw's bias correction differs)",
                    learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "sgd_nesterov": _algo(_sgd_nesterov, "Sutskever et al. 2013 Nesterov momentum + decoupled "
                          "decay; optax.trace(nesterov=True) chain",
                          learning_rate=(1e-3, 1.0, "log"), momentum=(0.8, 0.99, "linear"),
                          weight_decay=(1e-6, 1e-3, "log")),
    "lamb": _algo(_lamb, "You et al. 2020, LAMB; wraps optax.lamb",
                  learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "lars": _algo(_lars, "You et al. 2017, LARS (decay inside the trust ratio); wraps optax.lars",
                  learning_rate=(1e-2, 30.0, "log"), momentum=(0.8, 0.99, "linear"),
                  weight_decay=(1e-6, 1e-3, "log")),
    "lion": _algo(_lion, "Chen et al. 2023, Lion; wraps optax.lion",
                  learning_rate=(1e-5, 1e-3, "log"), b1=B1, b2=(0.95, 0.999, "linear"),
                  weight_decay=(1e-3, 3.0, "log")),
    "adafactor": _algo(_adafactor, "Shazeer & Stern 2018, Adafactor (relative step off); "
                       "wraps optax.adafactor (weight_decay -> weight_decay_rate)",
                       learning_rate=(1e-4, 1e-1, "log"), decay_rate=(0.5, 0.9, "linear"),
                       weight_decay=WD),
    "muon": _algo(_muon, "Jordan et al. 2024, Muon on 2D params, AdamW on the rest; wraps "
                  "optax.contrib.muon", learning_rate=(1e-3, 1e-1, "log"),
                  beta=(0.8, 0.99, "linear"), weight_decay=WD),
    "schedule_free_adamw": _algo(_schedule_free_adamw, "Defazio et al. 2024, Schedule-Free "
                                 "AdamW; wraps optax.contrib.schedule_free_adamw",
                                 learning_rate=(1e-4, 1e-2, "log"), b1=B1, b2=B2,
                                 weight_decay=WD),
    "adam_atan2": _algo(_adam_atan2, "Everett et al. 2024, Adam-atan2; "
                        "jaxlab.optim.adam_atan2 (not in optax)",
                        learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "shampoo": _algo(_shampoo, "Gupta et al. 2018, Shampoo (blocked); jaxlab.optim.shampoo",
                     learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "soap": _algo(_soap, "Vyas et al. 2024, SOAP; jaxlab.optim.soap",
                  learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
}


def get(name: str) -> Algorithm:
  """The zoo entry `name`; UserError naming the valid names otherwise."""
  if name not in OPTIMIZERS:
    raise UserError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
  return OPTIMIZERS[name]


def eval_params(name: str, params: Any, opt_state: Any) -> Any:
  """Params to evaluate at: schedule-free's averaged x sequence for schedule_free_adamw (its
  state found anywhere inside `opt_state`, e.g. behind clipping in a chain), `params` otherwise."""
  if name != "schedule_free_adamw":
    return params
  is_sf = lambda x: isinstance(x, contrib.ScheduleFreeState)
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=is_sf) if is_sf(s)]
  if len(states) != 1:
    raise ValueError(f"expected one ScheduleFreeState in opt_state, found {len(states)}")
  return contrib.schedule_free_eval_params(states[0], params)
