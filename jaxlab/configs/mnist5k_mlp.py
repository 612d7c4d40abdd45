r"""MLP on mnist5k (4,000 train / 1,000 test real MNIST digits): the main job.

  python -m experiments.train --config=jaxlab/configs/mnist5k_mlp.py --workdir=/tmp/jaxlab/mnist5k_mlp

Reaches: 97.4% test accuracy (eval/loss 0.102) after 3,000 steps; 25 s wall on 2 CPU cores
(22 s in the train loop). Without augment_shift it overfits at ~94.8%.
"""

import ml_collections

from jaxlab.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.data = common.image_data("mnist5k", augment_shift=2)  # random +-2 pixel translations
  c.model = ml_collections.ConfigDict({"name": "mlp", "hidden_widths": (512, 512)})
  c.num_steps = 3000
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.1
  return c
