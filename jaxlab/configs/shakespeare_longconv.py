r"""Byte-level long-convolution LM (gated Hyena/H3 mixer with an SGConv kernel, Li et al. 2022;
jaxlab/models/longconv.py) on the Shakespeare corpus, in place of shakespeare_lm.py's attention.

  python -m experiments.train --config=jaxlab/configs/shakespeare_longconv.py --workdir=/tmp/jaxlab/shakespeare_longconv

Model: 4 layers, d_model 256, short conv 3 taps, SGConv kernel of length 256 (kernel_dim 32,
4 scales, decay 0.5), Pre-LN, seq 256, batch 16; 3.42M parameters (shakespeare_lm.py: 3.28M).

A train step costs 1.06x the Transformer's (timed interleaved in one process; the short
depthwise conv runs as shift-and-add on CPU), so 250 steps take about 12 min on a 2-core AMD EPYC
(AVX2) like this project's (the Transformer's 250 steps: 11.8 min wall there, near idle).

Reaches: validation loss 1.748 nats/byte, 48.6% next-byte accuracy after 250 steps (1.855 /
45.5% at step 125); measured 2026-12-02 on a 2-core CPU shared with other jobs (37.9 min wall
under that load). The Transformer of shakespeare_lm.py (3.28M parameters) on the same 250-step
schedule reaches 1.949 / 43.0% (2.119 / 38.4% at step 125); command and table in
docs/results/kernels.md ("Models built on the kernels").
"""

import ml_collections

from jaxlab.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data = common.shakespeare_data(seq_len=256)
  c.model = ml_collections.ConfigDict({
      "name": "longconv", "d_model": 256, "num_layers": 4, "mlp_ratio": 4,
      "max_len": 256,  # SGConv kernel length: the training seq_len
      "short_taps": 3, "kernel_dim": 32, "decay": 0.5, "norm": "layernorm",
  })
  c.batch_size = 16
  c.eval_batch_size = 32
  c.eval_max_batches = 20
  c.num_steps = 250
  c.log_every = 25
  c.eval_every = 125
  c.checkpoint_every = 125
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 25
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  return c
