"""config.optim for the optimizer tests: AdamW, 10 warmup steps then cosine to 0.1 of the peak,
any key overridable."""

import ml_collections


def optim_config(**kw) -> ml_collections.ConfigDict:
  base = {"name": "adamw", "learning_rate": 1.0, "schedule": "cosine", "warmup_steps": 10,
          "min_lr_ratio": 0.1, "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
          "momentum": 0.0, "grad_clip": 0.0}
  base.update(kw)
  return ml_collections.ConfigDict(base)
