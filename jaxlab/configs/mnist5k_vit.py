r"""Small ViT (Dosovitskiy et al. 2021; 7x7 patches -> 16 tokens, Pre-LN, mean pool) on mnist5k.

  python -m experiments.train --config=jaxlab/configs/mnist5k_vit.py --workdir=/tmp/jaxlab/mnist5k_vit

Reaches: 98.0% test accuracy (eval/loss 0.073) after 2,000 steps; 4.3 min wall on 2 CPU cores.
"""

import ml_collections

from jaxlab.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data = common.image_data("mnist5k", augment_shift=2)
  c.model = ml_collections.ConfigDict({"name": "vit", "patch_size": 7, "dim": 128, "depth": 4,
                                       "num_heads": 4, "mlp_ratio": 2, "pool": "mean",
                                       "norm_placement": "pre", "mix_ratio": 0.25,
                                       "branch_gain": "none", "init_scheme": "default",
                                       "attention_init": "default"})
  c.num_steps = 2000
  c.eval_every = 500
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05
  return c
