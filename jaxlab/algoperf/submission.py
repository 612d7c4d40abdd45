"""A training algorithm as AlgoPerf sees it (Dahl et al. 2023, Sec. 3.2): an optax
GradientTransformation factory, a learning-rate schedule and a hyperparameter search space;
nothing else of the workload is visible to it.

`Submission.make(hparams, num_steps)` builds the transform for one trial. Every searched
hyperparameter may be a traced scalar, so the trials of a study run vmapped in one program;
hyperparameters outside the search space keep the zoo's Python defaults. The schedule is
linear warmup over `warmup_fraction` of the budget, then cosine decay to zero
('warmup_cosine', AlgoPerf's baselines) or constant ('warmup_constant', for schedule-free
methods, whose averaging replaces the decay).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import UserError
from jaxlab.optim import zoo

SCHEDULES = ("warmup_cosine", "warmup_constant")
WARMUP = (0.02, 0.1, "linear")  # searched fraction of the budget spent warming up

# Learning rates for the self-tuning ruleset (no search): the papers' or optax's recommended
# values for small models.
DEFAULT_LR = {"adamw": 1e-3, "nadamw": 1e-3, "sgd_nesterov": 0.1, "lamb": 1e-3, "lars": 1.0,
              "lion": 1e-4, "adafactor": 1e-2, "muon": 0.02, "schedule_free_adamw": 2.5e-3,
              "adam_atan2": 1e-3, "shampoo": 1e-3, "soap": 3e-3}


def warmup_schedule(peak: Any, warmup_fraction: Any, num_steps: int,
                    decay: str = "warmup_cosine") -> optax.Schedule:
  """lr(t) = peak t / w for t < w (w = max(warmup_fraction num_steps, 1)), then peak (1 + cos(pi
  (t - w) / (num_steps - w))) / 2, or peak for 'warmup_constant'. peak and warmup_fraction may be
  traced."""
  if decay not in SCHEDULES:
    raise UserError(f"schedule {decay!r}; valid: {', '.join(SCHEDULES)}")
  warm = jnp.maximum(jnp.asarray(warmup_fraction, jnp.float32) * num_steps, 1.0)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    if decay == "warmup_constant":
      after = 1.0
    else:
      progress = jnp.clip((t - warm) / jnp.maximum(num_steps - warm, 1.0), 0.0, 1.0)
      after = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return peak * jnp.where(t < warm, t / warm, after)

  return schedule


@dataclasses.dataclass(frozen=True)
class Submission:
  """name; update(learning_rate schedule, **hparams) -> GradientTransformation; search_space
  {hparam: (low, high, 'log' | 'linear')} (learning_rate and warmup_fraction included);
  defaults (the self-tuning hyperparameters); schedule; eval_params(name, params, opt_state)."""
  name: str
  update: Callable[..., optax.GradientTransformation]
  search_space: dict
  defaults: dict
  schedule: str = "warmup_cosine"
  grad_clip: float = 0.0  # > 0: gradients clipped to this global norm first (part of the algorithm)

  def make(self, hparams: dict, num_steps: int) -> optax.GradientTransformation:
    """The transform of one trial: hparams holds every searched name (floats or traced
    scalars); learning_rate and warmup_fraction become the schedule."""
    missing = set(self.search_space) - set(hparams)
    if missing:
      raise UserError(f"{self.name}: hyperparameters {sorted(missing)} missing; the search "
                      f"space is {sorted(self.search_space)}")
    hp = {**self.defaults, **hparams}
    lr = warmup_schedule(hp.pop("learning_rate"), hp.pop("warmup_fraction"), num_steps,
                         self.schedule)
    if self.grad_clip > 0:
      return optax.chain(optax.clip_by_global_norm(self.grad_clip), self.update(lr, **hp))
    return self.update(lr, **hp)

  def eval_params(self, params: Any, opt_state: Any) -> Any:
    return zoo.eval_params(self.name, params, opt_state)


def from_zoo(name: str, grad_clip: float = 0.0, lr_scale: float = 1.0) -> Submission:
  """The zoo's optimizer `name` as a submission: its search space plus warmup_fraction; its
  defaults plus DEFAULT_LR and a 5% warmup for self-tuning; grad_clip > 0 clips first.
  lr_scale multiplies both ends of the learning-rate search range and the default learning
  rate (at k times the batch, e.g. sqrt(k): the square-root rule of Malladi et al. 2022)."""
  algo = zoo.get(name)
  schedule = "warmup_constant" if name == "schedule_free_adamw" else "warmup_cosine"
  if grad_clip < 0:
    raise UserError(f"--grad_clip={grad_clip}: valid: 0 (no clipping) or a positive norm")
  if not lr_scale > 0:
    raise UserError(f"--lr_scale={lr_scale}: valid: a positive factor (1: the zoo's range)")
  low, high, spacing = algo.search_space["learning_rate"]
  space = {**algo.search_space, "learning_rate": (low * lr_scale, high * lr_scale, spacing),
           "warmup_fraction": WARMUP}
  defaults = {**algo.defaults, "learning_rate": DEFAULT_LR[name] * lr_scale,
              "warmup_fraction": 0.05}
  return Submission(name, algo.make, space, defaults, schedule, grad_clip)


def stack_hparams(trials: list[dict]) -> dict[str, jax.Array]:
  """[{name: value}] * K -> {name: float32 [K]} (the vmapped axis of a study's trials)."""
  names = sorted(trials[0])
  if any(sorted(t) != names for t in trials):
    raise UserError(f"trials name different hyperparameters; expected {names}")
  return {k: jnp.asarray([t[k] for t in trials], jnp.float32) for k in names}
