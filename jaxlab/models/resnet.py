"""CIFAR-style ResNet (He et al. 2016, §4.2): 3x3 stem, 3 stages of n basic blocks with widths
(w, 2w, 4w), global average pool, readout; depth 6n + 2 for n = blocks_per_stage.

Normalisation is a LayerNorm over the channels of each pixel (as in ConvNeXt), not BatchNorm:
BatchNorm needs a mutable 'batch_stats' collection and makes the loss depend on the batch
composition, while jaxlab's train step is a pure function of 'params' only. Residual branches
are added through parametrization.residual (x + r * branch, r = residual_multiplier(number of
blocks): 1 for SP, (L/L_base)^-alpha for depth-muP; u-muP's weighted add).

Depth and variance control (jaxlab.depth.init_schemes), all off by default:
  norm: layernorm | none (drops every norm: stem, branches, projection shortcuts).
  conv: standard | ws (scaled weight standardization of every conv, NF-ResNets, Brock et al.
      2021; NF-ResNet-like = conv='ws', norm='none', branch_gain='rezero', without the paper's
      alpha/beta signal-propagation scalars).
  init_scheme: default | lir (branch convs of block l, counted from 1 over all stages, init
      x 1/sqrt(l)) | fixup (Zhang et al. 2019, needs norm='none' and conv='standard': conv_1 and
      the readout init 0, conv_0 x L^(-1/2) (m = 2 layers per branch), scalar biases before
      every conv, the activations and the readout, a scalar multiplier ending each branch;
      shortcut projections keep the default init; the base init is the parametrization's
      (LeCun under SP) rather than He's).
  branch_gain: none | rezero (SkipInit, De & Smith 2020: a scalar gain initialised 0 ending each
      branch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.depth import init_schemes
from jaxlab.errors import UserError
from jaxlab.models.context import DEFAULT, LayerContext
from jaxlab.models.layers import Conv, Readout
from jaxlab.models.norms import LayerNorm, ScalarBias, ScalarGain
from jaxlab.models.size import Sized
from jaxlab.param.roles import INPUT


class BasicBlock(nn.Module):
  """relu(shortcut(x) + r * norm(conv(relu(norm(conv(x)))))), 3x3 convs (He et al. 2016, Fig. 2).

  The shortcut is a strided 1x1 conv + norm when the shape changes (option B), else identity.
  norm / conv / branch_gain: see the module docstring; init_scales multiply the init std of
  conv_0 and conv_1; fixup adds Fixup's scalar biases (bias_0a before conv_0 and the shortcut,
  bias_0b before the relu, bias_1a before conv_1, bias_1b last) and multiplier.
  """

  features: int
  strides: int = 1
  layer: int = 0
  num_layers: int = 1
  ctx: LayerContext = DEFAULT
  norm: str = "layernorm"
  conv: str = "standard"
  init_scales: tuple[float, float] = (1.0, 1.0)
  fixup: bool = False
  branch_gain: str = "none"

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kw = dict(ctx=self.ctx)
    cv = dict(use_bias=False, standardize=self.conv == "ws", **kw)
    norm = lambda name: _norm(self.norm, name, self.ctx)  # noqa: E731
    bias = lambda name: ScalarBias(name=name, **kw) if self.fixup else _identity  # noqa: E731
    s0, s1 = self.init_scales
    bias_0a = bias("bias_0a")  # one module, read by the branch and the projection shortcut

    def branch(x):
      h = Conv(self.features, 3, strides=self.strides, init_scale=s0, name="conv_0", **cv)(
          bias_0a(x))
      h = jax.nn.relu(norm("norm_0")(bias("bias_0b")(h)))
      h = Conv(self.features, 3, init_scale=s1, name="conv_1", **cv)(bias("bias_1a")(h))
      h = norm("norm_1")(h)
      if self.fixup:
        h = bias("bias_1b")(ScalarGain(1.0, name="multiplier", **kw)(h))
      if self.branch_gain == "rezero":
        h = ScalarGain(0.0, name="branch_gain", **kw)(h)
      return h

    def projection(x):
      x = Conv(self.features, 1, strides=self.strides, name="proj", **cv)(bias_0a(x))
      return norm("proj_norm")(x)

    shortcut = None
    if self.strides != 1 or x_BHWC.shape[-1] != self.features:
      shortcut = projection
    p = self.ctx.parametrization
    return jax.nn.relu(p.residual(x_BHWC, branch, layer=self.layer, num_layers=self.num_layers,
                                  shortcut=shortcut))


NORMS = ("layernorm", "none")


def _identity(x: jax.Array) -> jax.Array:
  return x


def _norm(kind: str, name: str, ctx: LayerContext):
  """A channel LayerNorm named `name`, or the identity for norm='none'."""
  if kind == "none":
    return _identity
  return LayerNorm(name=name, axis_name="conv_out", ctx=ctx)


def _check(m: nn.Module) -> None:
  """ValueErrors naming config.model.<key> for the ResNet's depth-control keys."""
  init_schemes.check("norm", m.norm, NORMS)
  init_schemes.check("conv", m.conv, init_schemes.CONVS)
  init_schemes.check("init_scheme", m.init_scheme, init_schemes.RESNET_INIT_SCHEMES)
  init_schemes.check("branch_gain", m.branch_gain, init_schemes.BRANCH_GAINS)
  if m.init_scheme == "fixup" and (m.norm != "none" or m.conv != "standard"):
    raise UserError("config.model.init_scheme='fixup' needs config.model.norm='none' and "
                    f"config.model.conv='standard' (got {m.norm!r}, {m.conv!r}): Fixup trains "
                    "without norms, and standardization would undo its zero/rescaled init")
  if m.init_scheme == "lir" and m.conv == "ws":
    raise UserError("config.model.init_scheme='lir' has no effect with config.model.conv='ws' "
                    "(standardization removes the init scale); use conv='standard'")


class ResNet(nn.Module, Sized):
  """Images [B, H, W, C] -> logits [B, num_classes]; stride 2 at the start of stages 2 and 3.
  Its width is `width` (stages 1x/2x/4x of it), its depth 3 * blocks_per_stage."""

  WIDTH_KEY, DEPTH_KEY, DEPTH_FACTOR = "width", "blocks_per_stage", 3

  width: int = 16
  blocks_per_stage: int = 2
  num_classes: int = 10
  ctx: LayerContext = DEFAULT
  norm: str = "layernorm"
  conv: str = "standard"
  init_scheme: str = "default"
  branch_gain: str = "none"

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    _check(self)
    kw = dict(ctx=self.ctx)
    num_blocks = 3 * self.blocks_per_stage
    fixup = self.init_scheme == "fixup"
    block_kw = dict(norm=self.norm, conv=self.conv, fixup=fixup, branch_gain=self.branch_gain)
    x = Conv(self.width, 3, role=INPUT, use_bias=False, standardize=self.conv == "ws",
             name="stem", **kw)(x_BHWC)
    if fixup:
      x = ScalarBias(name="stem_bias", **kw)(x)
    x = jax.nn.relu(_norm(self.norm, "stem_norm", self.ctx)(x))
    for stage, mult in enumerate((1, 2, 4)):
      for b in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and b == 0 else 1
        index = stage * self.blocks_per_stage + b
        if fixup:
          init_scales = init_schemes.fixup_scales(num_blocks)
        elif self.init_scheme == "lir":
          init_scales = (init_schemes.lir_scale(index),) * 2
        else:
          init_scales = (1.0, 1.0)
        x = BasicBlock(self.width * mult, strides=strides, layer=index, num_layers=num_blocks,
                       init_scales=init_scales, name=f"stage_{stage}_block_{b}", **block_kw,
                       **kw)(x)
    x_BC = jnp.mean(x, axis=(1, 2))
    if fixup:
      x_BC = ScalarBias(name="readout_bias", **kw)(x_BC)
    return Readout(self.num_classes, kernel_axes=("conv_out", "classes"),
                   init_scale=0.0 if fixup else 1.0, name="readout", **kw)(x_BC)
