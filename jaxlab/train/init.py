"""Building the model and the (sharded) initial train state from a config.

Imports no data stack and no ml_collections (configs are only read here), so
experiments.device_check can use it on a machine with just jax/flax/optax."""

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab import models, optim, param, quant, sharding
from jaxlab.errors import UserError
from jaxlab.models.context import dtype_of
from jaxlab.sharding import rules
from jaxlab.train import core, tasks
from jaxlab.train.state import TrainState

if TYPE_CHECKING:
  import ml_collections


def build_model(config: "ml_collections.ConfigDict", spec: Any) -> nn.Module:
  """config.model plus what the data decides (num_classes / vocab_size) -> a Flax module whose
  layer context holds config.param's parametrization (resolved by models.build), config.quant, and the
  compute / param dtypes config.dtype / config.param_dtype."""
  model_cfg = dict(config.model.to_dict())
  if spec.task == "classification" and "num_classes" not in model_cfg:
    model_cfg["num_classes"] = spec.num_classes
  if spec.task == "lm" and "vocab_size" not in model_cfg:
    model_cfg["vocab_size"] = spec.vocab_size
  p = param.get(**config.param)
  try:
    policy = quant.get(config.quant)
  except UserError as e:
    raise UserError(f"config.quant={config.quant!r}: {e}") from None
  return models.build(model_cfg, parametrization=p, quant=policy,
                      dtype=dtype_of(config.get("dtype", "float32"), "config.dtype"),
                      param_dtype=dtype_of(config.get("param_dtype", "float32"),
                                           "config.param_dtype"))


def param_info_of(model: nn.Module, example: jax.Array) -> Any:
  """Role / fan-in / fan-out / logical axes of every parameter, without allocating any."""
  abstract = jax.eval_shape(lambda r: model.init(r, example), jax.random.PRNGKey(0))["params"]
  return param.param_info(abstract)


def make_tx(config: "ml_collections.ConfigDict", model: nn.Module,
            info: Any) -> optax.GradientTransformation:
  """config.optim's optimizer followed by the model's parametrization's per-parameter LR scales
  (and, for Adam, its per-parameter epsilon scales; with weight decay, its per-parameter decay
  scales)."""
  p = model.ctx.parametrization
  family = optim.check_family(config.optim.name, p, info)
  eps = (optim.scale_adam_eps_by_parametrization(p, info)
         if config.optim.name in optim.WITH_EPSILON else None)
  decay = optim.decay_coefficients(p, info, family)
  return optax.chain(optim.make_optimizer(config.optim, config.num_steps, before=eps,
                                          decay=decay),
                     optim.scale_by_parametrization(p, info, family))


def dummy_input(spec: Any, seq_len: int = 0) -> jax.Array:
  if spec.task == "classification":
    return jnp.zeros((1, *spec.input_shape), jnp.float32)
  return jnp.zeros((1, seq_len), jnp.int32)


def init_state(model: nn.Module, tx: optax.GradientTransformation, example: jax.Array,
               seed: int, mesh: Mesh) -> tuple[TrainState, Any]:
  """(state, state_shardings): every array is created directly in its shards. `example` is the
  model input init sees (a dummy, or a real batch for data-dependent init: `init_inputs`).
  Quantization state of the model (fp8 delayed-scaling histories) goes to
  state.extra['quant_state']; without it extra stays {}."""
  rng = jax.random.PRNGKey(seed)
  init_rng, _ = jax.random.split(rng)  # the split keeps the params of older runs
  abstract = jax.eval_shape(lambda r: model.init(r, example), init_rng)["params"]
  shardings = rules.param_shardings(abstract, mesh)

  def make(r, example):
    params, extra = core.init_params_and_extra(model, r, example)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      extra=extra)

  state_shardings = _state_shardings(jax.eval_shape(make, init_rng, example), shardings, tx,
                                     mesh)
  state = jax.jit(make, out_shardings=state_shardings)(init_rng, example)
  return state, state_shardings


def init_inputs(model: nn.Module, example: jax.Array, train_iter: Any, task: tasks.Task,
                mesh: Mesh) -> jax.Array:
  """What init should see: `example`, or the inputs of the first training batch when the
  model's quantization policy initialises from data (LSQ activation steps). The iterator is
  rewound, so training still starts from that batch."""
  if not model.ctx.quant.needs_data_init:
    return example
  start = train_iter.get_state()
  batch = sharding.shard_batch(next(train_iter), mesh)
  train_iter.set_state(start)
  return task.inputs(batch)


def _state_shardings(abstract: TrainState, param_shardings: Any, tx: optax.GradientTransformation,
                     mesh: Mesh) -> TrainState:
  """Params per the partition rules; optimizer leaves shaped like params (Adam moments, momenta)
  follow their parameter; everything else (step, counts) is replicated."""
  replicated = NamedSharding(mesh, P())
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt,
                    extra=jax.tree.map(lambda _: replicated, abstract.extra))
