"""Optimizer and learning-rate schedule from a config (optax).

config.optim keys: name (adamw | adam | adam_atan2 | sgd | lion, or any jaxlab.optim.zoo name),
learning_rate, schedule (constant | cosine | linear), warmup_steps, min_lr_ratio (cosine/linear
floor as a fraction of the peak), weight_decay, b1, b2, eps, momentum (sgd), grad_clip (global-norm
clip; 0 disables). A zoo optimizer takes every config key named in its `defaults`.
"""

import math
from typing import Any

import optax

from jaxlab.errors import UserError
from jaxlab.optim import zoo
from jaxlab.optim.adam_atan2 import adam_atan2
from jaxlab.optim.parametrization import add_scaled_decayed_weights

BUILTIN = ("adamw", "adam", "adam_atan2", "sgd", "lion")
OPTIMIZERS = BUILTIN + tuple(n for n in zoo.OPTIMIZERS if n not in BUILTIN)
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(cfg: Any, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then constant, cosine or linear decay to the floor."""
  peak, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
  if not (math.isfinite(peak) and peak > 0):
    raise UserError(f"config.optim.learning_rate={cfg.learning_rate} must be a positive finite "
                    "number (the peak of the schedule)")
  if not 0 <= float(cfg.get("min_lr_ratio", 0.0)) <= 1:
    raise UserError(f"config.optim.min_lr_ratio={cfg.min_lr_ratio} must lie in [0, 1] (the "
                    "schedule's floor as a fraction of config.optim.learning_rate)")
  if cfg.schedule not in SCHEDULES:
    raise UserError(f"config.optim.schedule={cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
  if not 0 <= warmup <= num_steps:
    raise UserError(f"config.optim.warmup_steps={warmup} must lie in [0, num_steps={num_steps}]")
  floor = peak * float(cfg.get("min_lr_ratio", 0.0))
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=floor / peak)
  else:
    after = optax.linear_schedule(peak, floor, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: Any, num_steps: int, before: optax.GradientTransformation | None = None,
                   decay: Any | None = None) -> optax.GradientTransformation:
  """optax chain: [clip_by_global_norm] -> [before] -> optimizer(schedule); `before` sees the
  clipped gradients (e.g. jaxlab.optim.scale_adam_eps_by_parametrization). `decay`: optional
  tree of per-parameter factors of the weight decay (jaxlab.optim.decay_coefficients); the
  decoupled optimizers (adamw, adam_atan2, lion) then decay each parameter by
  lr * weight_decay * factor, the same chain as optax's otherwise. Other zoo optimizers:
  zoo.get(name).make(schedule, **config keys in its defaults); they take no `decay` factors."""
  lr = make_schedule(cfg, num_steps)
  wd = float(cfg.get("weight_decay", 0.0))
  scaled = decay is not None and wd != 0.0
  if cfg.name == "adamw" and scaled:
    opt = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                      add_scaled_decayed_weights(wd, decay), optax.scale_by_learning_rate(lr))
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adam_atan2":
    opt = adam_atan2(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                     decay=decay if scaled else None)
  elif cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=cfg.get("momentum", 0.0) or None)
  elif cfg.name == "lion" and scaled:
    opt = optax.chain(optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2),
                      add_scaled_decayed_weights(wd, decay), optax.scale_by_learning_rate(lr))
  elif cfg.name == "lion":
    opt = optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  elif cfg.name in zoo.OPTIMIZERS:
    if scaled:
      raise UserError(f"config.optim.name={cfg.name!r} takes no per-parameter weight-decay factors "
                      "(a parametrization's decay rule); those work with adamw, adam_atan2, lion")
    algo = zoo.get(cfg.name)
    opt = algo.make(lr, **{k: cfg[k] for k in algo.defaults if k in cfg})
  else:
    raise UserError(f"config.optim.name={cfg.name!r}; valid: {', '.join(OPTIMIZERS)}")
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.get("grad_clip", 0.0) else []
  parts += [before] if before is not None else []
  return optax.chain(*parts, opt) if parts else opt
