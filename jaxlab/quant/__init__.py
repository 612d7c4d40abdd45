"""Quantization policies (no quantization for now)."""

from jaxlab.quant.policy import NO_QUANT, QuantPolicy, get
