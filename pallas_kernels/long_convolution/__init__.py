"""Long causal convolution (kernel length = sequence length): direct XLA reference, FFT path and
block-Toeplitz Pallas kernels behind `pallas_kernels.long_conv` (= api.long_conv), plus the
SGConv kernel parameterisation (sgconv.SGConvKernel).
"""

from pallas_kernels.long_convolution.api import (IMPLEMENTATIONS, default_implementation,
                                                 long_conv)
from pallas_kernels.long_convolution.sgconv import SGConvKernel

__all__ = ["IMPLEMENTATIONS", "SGConvKernel", "default_implementation", "long_conv"]
