"""Quasi-random search: AlgoPerf's external-tuning trials (Dahl et al. 2023, Sec. 4.1) are points of
a scrambled Halton sequence mapped into the submission's search space (Bousquet et al. 2017,
"Critical Hyper-Parameters: No Random, No Cry").

A search space is `{hparam_name: (low, high, "log" | "linear")}`.
"""

import math
from typing import Mapping

import numpy as np

from jaxlab.errors import UserError

SCALES = ("log", "linear")
# Digits kept per base: the most with base**digits <= 2**50, so a point (an integer over
# base**digits) is below 1 in float64 and indices up to base**digits - 1 are resolved.
_MANTISSA_BITS = 50


def _primes(count: int) -> list[int]:
  """The first `count` primes (trial division by the primes found so far)."""
  primes = []
  candidate = 2
  while len(primes) < count:
    if all(candidate % p for p in primes if p * p <= candidate):
      primes.append(candidate)
    candidate += 1
  return primes


def _num_digits(base: int) -> int:
  return int(_MANTISSA_BITS // math.log2(base))


def _radical_inverse(indices: np.ndarray, base: int, permutation: np.ndarray) -> np.ndarray:
  """sum_d permutation[a_d(i)] base^-d over the first `_num_digits(base)` base-`base` digits
  a_1, a_2, ... (least significant first) of each index i: the van der Corput radical inverse
  with every digit, leading zeros included, passed through `permutation`. The sum is an exact
  integer over base^digits (< 2**50), so each point is one correctly rounded division."""
  num_digits = _num_digits(base)
  numerator = np.zeros(indices.size, np.int64)
  rest = indices.copy()
  for _ in range(num_digits):
    rest, digit = np.divmod(rest, base)
    numerator = numerator * base + permutation[digit]
  return numerator / float(base**num_digits)


def halton(n: int, dim: int, seed: int = 0) -> np.ndarray:
  """[n, dim] points in [0, 1) of the Halton sequence (Halton 1960): dimension j is the radical
  inverse in the j-th prime base of the indices 1..n (index 0, the all-zeros point, is skipped).

  seed 0 gives the plain sequence (base 2: 1/2, 1/4, 3/4, 1/8, ...; base 3: 1/3, 2/3, 1/9, ...).
  Any other seed scrambles it by random permutation of the digits (Braaten & Weller 1979;
  Bousquet et al. 2017): dimension j draws one permutation of 0..base-1 from
  `np.random.default_rng(seed)` and applies it to every digit of a fixed number of places
  (leading zeros too), which keeps each dimension's stratification -- the first base^k points
  put one point in each interval [m / base^k, (m + 1) / base^k) -- so studies with different
  seeds get different but still low-discrepancy points. Base 2 has only two permutations, so a
  dimension in base 2 is unscrambled for about half the seeds. halton(m, ...) is the first m rows
  of halton(n, ...) for m <= n.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise UserError(f"halton: n={n!r} is not a valid number of points; pass an int >= 1")
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
    raise UserError(f"halton: dim={dim!r} is not a valid dimension; pass an int >= 1")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"halton: seed={seed!r} is not a valid seed; pass an int >= 0")
  bases = _primes(dim)
  capacity = min(base**_num_digits(base) for base in bases)
  if n >= capacity:
    raise UserError(f"halton: n={n} points exceed the {capacity - 1} that {dim} dimensions "
                    "resolve in float64; pass fewer points")
  rng = np.random.default_rng(seed) if seed else None
  indices = np.arange(1, n + 1, dtype=np.int64)
  columns = []
  for base in bases:
    permutation = rng.permutation(base) if rng is not None else np.arange(base)
    columns.append(_radical_inverse(indices, base, permutation.astype(np.int64)))
  return np.stack(columns, axis=1)


def validate_space(search_space: Mapping) -> None:
  """Raises UserError unless every entry is (low, high, scale) with finite low < high, scale in
  SCALES, and low > 0 where scale is "log"."""
  if not isinstance(search_space, Mapping) or not search_space:
    raise UserError(f"search space {search_space!r} is not valid; pass a non-empty dict "
                    "{name: (low, high, 'log' | 'linear')}")
  for name, entry in search_space.items():
    if not isinstance(name, str):
      raise UserError(f"search space: hparam name {name!r} is not a string")
    if not isinstance(entry, (tuple, list)) or len(entry) != 3:
      raise UserError(f"search space: hparam {name!r} is {entry!r}; pass (low, high, scale)")
    low, high, scale = entry
    if scale not in SCALES:
      raise UserError(f"search space: hparam {name!r} has scale {scale!r}; valid: {SCALES}")
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               and math.isfinite(v) for v in (low, high)):
      raise UserError(f"search space: hparam {name!r} has bounds ({low!r}, {high!r}); pass two "
                      "finite numbers")
    if not low < high:
      raise UserError(f"search space: hparam {name!r} has low={low!r} >= high={high!r}; pass "
                      "low < high")
    if scale == "log" and low <= 0:
      raise UserError(f"search space: hparam {name!r} is log-scaled with low={low!r}; a log "
                      "scale needs low > 0")


def sample(search_space: Mapping, n: int, seed: int = 0) -> list[dict[str, float]]:
  """n trials of quasi-random search (Bousquet et al. 2017): row i of halton(n, dim, seed) mapped
  into the space, dimensions in sorted hparam-name order; u in [0, 1) goes to
  low + u (high - low) on a "linear" scale and exp(log low + u (log high - log low)) on a "log"
  scale (uniform in log space)."""
  validate_space(search_space)
  names = sorted(search_space)
  points = halton(n, len(names), seed)
  trials = []
  for row in points:
    trial = {}
    for name, u in zip(names, row):
      low, high, scale = search_space[name]
      if scale == "linear":
        value = low + u * (high - low)
      else:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
      trial[name] = float(value)
    trials.append(trial)
  return trials
