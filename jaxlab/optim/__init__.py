"""optax transforms and optimizers built from configs."""

from jaxlab.optim.optimizers import make_optimizer, make_schedule
