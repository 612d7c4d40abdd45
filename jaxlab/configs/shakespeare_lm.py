r"""Byte-level decoder-only Transformer LM on the Shakespeare corpus (38 train / 4 held-out works).

  python -m experiments.train --config=jaxlab/configs/shakespeare_lm.py --workdir=/tmp/jaxlab/shakespeare_lm

Model: 4 layers, d_model 256, 4 heads, RoPE, Pre-LN, untied, seq 256, batch 16 (the size
experiments.bench measures).

Reaches: validation loss 1.467 nats/byte (2.12 bits/byte; 56.0% next-byte accuracy) on the first
640 windows of the held-out works after 2,000 steps (8.2M training bytes, ~1.7 epochs); train
loss 1.33. 31 min wall on 2 CPU cores (~1.1 steps/s). Validation loss at steps 500/1000/1500:
1.725 / 1.570 / 1.494.
"""

import ml_collections

from jaxlab.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data = common.shakespeare_data(seq_len=256)
  c.model = ml_collections.ConfigDict({
      "name": "transformer", "d_model": 256, "num_layers": 4, "num_heads": 4, "mlp_ratio": 4,
      "positional": "rope", "tie_embeddings": False, "norm": "layernorm",
      # depth and variance control (jaxlab.depth; see jaxlab/models/transformer.py)
      "norm_placement": "pre", "mix_ratio": 0.25, "branch_gain": "none",
      "init_scheme": "default", "attention_init": "default",
  })
  c.batch_size = 16
  c.eval_batch_size = 32
  c.eval_max_batches = 20
  c.num_steps = 2000
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.depth_metrics_every = 500  # depth/* per-block diagnostics in metrics.jsonl
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  return c
