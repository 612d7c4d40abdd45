"""int8 x int8 -> int32 matmul with per-token / per-output-channel float32 scales, as XLA
reference and Pallas kernels behind `pallas_kernels.int8_matmul`, and `quantized_matmul`
(on-the-fly symmetric int8 quantization with a straight-through backward) (= api.*)."""

from pallas_kernels.int8_matmul.api import (IMPLEMENTATIONS, default_implementation, int8_matmul,
                                            quantized_matmul)
from pallas_kernels.int8_matmul.reference import quantize_int8

__all__ = ["IMPLEMENTATIONS", "default_implementation", "int8_matmul", "quantize_int8",
           "quantized_matmul"]
