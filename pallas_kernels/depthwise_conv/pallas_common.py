"""What the TPU (pallas_tpu.py) and GPU (pallas_gpu.py) depthwise convolution kernels share: the
static call description and the output shape of the cross-correlation."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one cross-correlation (hashable: a custom_vjp nondiff arg)."""
  name: str  # pallas_call name of the forward ("depthwise_conv1d" / "depthwise_conv2d")
  pads: tuple  # ((lo, hi),) for 1-D, ((top, bottom), (left, right)) for 2-D
  block: int  # TPU: output rows per tile; GPU: width (1-D: time) positions per program
  block_c: int  # channels per tile / program
  target: str  # "tpu" or "gpu"
  interpret: bool


def out_shape(x_shape, ksize, pads) -> tuple:
  """Spatial output shape of the cross-correlation."""
  return tuple(n + lo + hi - k + 1 for n, k, (lo, hi) in zip(x_shape[1:-1], ksize, pads))

