"""optax transforms and optimizers built from configs."""

from jaxlab.optim.adam_atan2 import adam_atan2, scale_by_adam_atan2
from jaxlab.optim.optimizers import make_optimizer, make_schedule
from jaxlab.optim.parametrization import (WITH_EPSILON, adam_eps_scales,
                                          add_scaled_decayed_weights, check_family,
                                          decay_coefficients, lr_scales, optimizer_family,
                                          scale_adam_eps_by_parametrization,
                                          scale_by_parametrization, weight_decay_scales)
