"""Parameter roles, in the sense of Tensor Programs V (Yang et al. 2022, Table 3).

Every parameter a jaxlab layer creates carries one of these roles, plus its fan-in and
fan-out, so a parametrization can decide its init std, forward multiplier and learning rate.
"""

INPUT = "input"  # weights reading the data: first Dense/Conv, embedding tables, patch embeds
HIDDEN = "hidden"  # matrix-like weights with both fans growing with width
READOUT = "readout"  # the last weight, mapping width to a fixed number of outputs
BIAS = "bias"  # vector-like additive parameters
NORM = "norm"  # vector-like multiplicative gains of normalisation layers

ALL = (INPUT, HIDDEN, READOUT, BIAS, NORM)


def check(role: str) -> str:
  if role not in ALL:
    raise ValueError(f"unknown parameter role {role!r}; valid roles: {', '.join(ALL)}")
  return role
