"""Whole train steps export for TPU and GPU with the Pallas kernels inside (issue 14, item 3).

Each config's model (shrunk: small width, depth and sequence; the layers and kernels are the
config's) goes through jaxlab.train.init (build_model, make_tx, init_state, abstractly) and the
module-level jaxlab.train.step.train_step, exported from this CPU host with jax.export for
"tpu" and "cuda" (tests/pallas_kernels/lowering.py). The exported module must call every
kernel the step needs, forward and backward: a silent XLA fallback fails the test. Nothing is
executed (the state and batch are jax.ShapeDtypeStructs) and no dataset is read.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

from jaxlab.configs import mnist5k_convnext, shakespeare_lm, shakespeare_longconv
from jaxlab import sharding
from jaxlab.train import init
from jaxlab.train import step as step_lib, tasks
from tests.pallas_kernels.lowering import export_text, kernel_names

PLATFORMS = ("tpu", "cuda")
BATCH, SEQ = 2, 256


@dataclasses.dataclass(frozen=True)
class Spec:
  """The DataSpec fields init reads (jaxlab.data.DataSpec without importing the data stack)."""
  task: str
  num_classes: int | None = None
  input_shape: tuple[int, ...] | None = None
  vocab_size: int | None = None


ATTENTION = ("flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv")
DEPTHWISE_2D = ("depthwise_conv2d", "depthwise_conv2d_dx", "depthwise_conv2d_dw")
DEPTHWISE_1D = ("depthwise_conv1d", "depthwise_conv1d_dx", "depthwise_conv1d_dw")
LONG_CONV = ("long_conv_toeplitz", "long_conv_toeplitz_du", "long_conv_toeplitz_grad")


def _lm_batch():
  tokens = jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32)
  return {"inputs": tokens, "targets": tokens}


STEPS = {
    # name: (config module, model overrides, spec, batch, kernels expected on every platform)
    "transformer_lm": (
        shakespeare_lm, dict(d_model=128, num_layers=1, num_heads=2), Spec("lm", vocab_size=256),
        _lm_batch, ATTENTION),
    "convnext": (
        mnist5k_convnext, dict(widths=(32, 64), depths=(1, 1)),
        Spec("classification", num_classes=10, input_shape=(28, 28, 1)),
        lambda: {"image": jax.ShapeDtypeStruct((BATCH, 28, 28, 1), jnp.float32),
                 "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32)},
        DEPTHWISE_2D),
    "longconv_lm": (
        shakespeare_longconv, dict(d_model=128, num_layers=1, max_len=SEQ),
        Spec("lm", vocab_size=256), _lm_batch, LONG_CONV + DEPTHWISE_1D),
}


@functools.cache
def _step(name: str):
  """(train_step with its static args bound, abstract state, abstract batch) of one config."""
  module, overrides, spec, batch, _ = STEPS[name]
  config = module.get_config()
  config.model.update(overrides)
  model = init.build_model(config, spec)
  example = init.dummy_input(spec, SEQ)
  tx = init.make_tx(config, model, init.param_info_of(model, example))
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  state = jax.eval_shape(lambda: init.init_state(model, tx, example, 0, mesh)[0])
  step = functools.partial(step_lib.train_step, model=model, tx=tx, task=tasks.get(spec.task))
  return step, state, batch()


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", sorted(STEPS))
def test_train_step_exports_with_kernels(name, platform):
  step, state, batch = _step(name)
  names = kernel_names(export_text(step, state, batch, platform=platform), platform)
  missing = [k for k in STEPS[name][-1] if k not in names]
  assert not missing, f"{name} step for {platform}: kernels {missing} missing; found {names}"


def test_cpu_export_has_no_kernel_calls():
  """The same program exported for CPU takes the XLA paths (platform_dependent's default)."""
  step, state, batch = _step("transformer_lm")
  text = export_text(step, state, batch, platform="cpu")
  assert "tpu_custom_call" not in text and "xla.gpu.triton" not in text
