"""Quantization: fake quantizers with custom VJPs (`quantizers`, `fp8`), formats that own their
fake quant and state (`formats`), per-op configs and the quantized dot_general / conv
(`config`), module-path policies that layers obey (`policy`) and the state a layer keeps
(`layer_state`): LSQ steps (params) and fp8 delayed-scaling histories (collection
QUANT_STATE = 'quant_state', carried in TrainState.extra)."""

from jaxlab.quant import fp8, quantizers
from jaxlab.quant.config import (QuantConfig, quantized_conv_general_dilated,
                                 quantized_dot_general)
from jaxlab.quant.formats import (FORMATS, QUANT_STATE, BinaryFormat, FP8Format, Format,
                                  IntFormat, LSQFormat, TernaryFormat, quantize_operand)
from jaxlab.quant.layer_state import model_variables, quant_inputs
from jaxlab.quant.policy import KEEP_FLOAT_ROLES, NO_QUANT, QuantPolicy, get, names
from jaxlab.quant.quantizers import (binary_fake_quant, int_fake_quant, lsq_fake_quant,
                                     ternary_fake_quant)

__all__ = [
    "BinaryFormat", "FORMATS", "FP8Format", "Format", "IntFormat", "KEEP_FLOAT_ROLES",
    "LSQFormat", "NO_QUANT", "QUANT_STATE", "QuantConfig", "QuantPolicy", "TernaryFormat",
    "binary_fake_quant", "fp8", "get", "int_fake_quant", "lsq_fake_quant", "model_variables",
    "names", "quant_inputs", "quantize_operand", "quantized_conv_general_dilated",
    "quantized_dot_general", "quantizers", "ternary_fake_quant"]

from jaxlab.quant import equalization, ptq  # noqa: E402  (post-training quantization, DFQ)
__all__ += ["equalization", "ptq"]
