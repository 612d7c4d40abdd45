"""Depthwise convolutions: the causal 1-D short conv of Hyena/Mamba blocks and large-kernel 2-D
depthwise convs (RepLKNet, ConvNeXt), as XLA reference and Pallas kernels behind
`pallas_kernels.depthwise_conv1d` / `pallas_kernels.depthwise_conv2d` (= api.*)."""

from pallas_kernels.depthwise_conv.api import (IMPLEMENTATIONS, default_implementation,
                                               depthwise_conv1d, depthwise_conv2d)

__all__ = ["IMPLEMENTATIONS", "default_implementation", "depthwise_conv1d", "depthwise_conv2d"]
