"""Halton points match the radical inverse's closed form, stay in [0, 1) and stratified when
scrambled; sample() maps them into the search space (linear, and uniform in log space),
deterministically, and rejects a bad space by naming the hparam."""

from fractions import Fraction
import math

import numpy as np
import pytest

from jaxlab.algoperf import search
from jaxlab.errors import UserError

SPACE = {"learning_rate": (1e-4, 1e-2, "log"), "b1": (0.8, 0.99, "linear"),
         "weight_decay": (1e-6, 1e-1, "log")}


def _van_der_corput(i: int, base: int) -> Fraction:
  """The radical inverse of i in `base`, exactly: digits of i mirrored about the point."""
  value, scale = Fraction(0), Fraction(1, base)
  while i:
    i, digit = divmod(i, base)
    value += digit * scale
    scale /= base
  return value


def _bin(x: float, count: int) -> int:
  """The m with m / count <= p < (m + 1) / count for the exact point p that float x rounds
  (|x - p| <= 2**-54 below 1). A point is an integer over base^digits <= 2**50 (search.py), so
  it lies a multiple of 2**-50 from any bin edge: x + 2**-53 falls in p's bin, exactly."""
  return math.floor((Fraction(x) + Fraction(1, 2**53)) * count)


def test_seed_0_is_the_plain_halton_sequence():
  points = search.halton(8, 2)
  np.testing.assert_array_equal(points[:4, 0], [0.5, 0.25, 0.75, 0.125])
  np.testing.assert_allclose(points[:4, 1], [1 / 3, 2 / 3, 1 / 9, 4 / 9], rtol=1e-15)


def test_seed_0_matches_the_radical_inverse_in_the_first_primes():
  n, bases = 200, (2, 3, 5, 7, 11, 13)
  points = search.halton(n, len(bases))
  expected = [[float(_van_der_corput(i, b)) for b in bases] for i in range(1, n + 1)]
  np.testing.assert_allclose(points, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_points_lie_in_the_unit_cube(seed):
  points = search.halton(5000, 8, seed)
  assert points.shape == (5000, 8)
  assert points.min() >= 0 and points.max() < 1


def test_prefix_of_a_longer_sequence():
  np.testing.assert_array_equal(search.halton(30, 4, seed=3), search.halton(100, 4, seed=3)[:30])


@pytest.mark.parametrize("seed", [1, 2, 3, 99])
def test_scrambled_points_differ_from_the_plain_ones(seed):
  plain, scrambled = search.halton(64, 3), search.halton(64, 3, seed)
  assert not np.allclose(plain, scrambled)
  assert not np.allclose(search.halton(64, 3, seed + 1000), scrambled)


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 31])
@pytest.mark.parametrize("base_index,base,k", [(0, 2, 6), (1, 3, 4), (2, 5, 3), (3, 7, 2),
                                               (4, 11, 2)])
def test_each_dimension_puts_one_point_in_each_of_base_to_the_k_bins(seed, base_index, base, k):
  """The first base^k points of a (digit-permuted) van der Corput sequence are one per interval
  [m / base^k, (m + 1) / base^k): their first k digits run over all base^k combinations and a
  digit permutation is a bijection on them. Sorted, point m lies in interval m (to float
  rounding: see _bin)."""
  n = base**k
  x = search.halton(n, base_index + 1, seed)[:, base_index]
  assert sorted(_bin(v, n) for v in x) == list(range(n))


@pytest.mark.parametrize("seed", [0, 4])
def test_first_two_dimensions_stratify_jointly(seed):
  """36 = 4 * 9 points of bases 2 and 3: indices 1..36 cover every residue mod 4 and mod 9
  together (Chinese remainder theorem), so each 1/4 x 1/9 box holds exactly one point."""
  points = search.halton(36, 2, seed)
  boxes = {(_bin(x, 4), _bin(y, 9)) for x, y in points}
  assert len(boxes) == 36


@pytest.mark.parametrize("n,dim,seed", [(0, 1, 0), (3, 0, 0), (3, 1, -1), (2.5, 1, 0)])
def test_halton_rejects_bad_arguments(n, dim, seed):
  with pytest.raises(UserError):
    search.halton(n, dim, seed)


def test_sample_maps_halton_points_in_sorted_name_order():
  n, seed = 20, 5
  u = search.halton(n, 3, seed)  # columns: b1, learning_rate, weight_decay
  trials = search.sample(SPACE, n, seed)
  assert len(trials) == n
  for row, trial in zip(u, trials):
    assert set(trial) == set(SPACE)
    assert all(type(v) is float for v in trial.values())
    assert trial["b1"] == pytest.approx(0.8 + row[0] * 0.19, rel=1e-12)
    assert trial["learning_rate"] == pytest.approx(1e-4 * 100**row[1], rel=1e-12)
    assert trial["weight_decay"] == pytest.approx(1e-6 * 1e5**row[2], rel=1e-12)


def test_sample_respects_bounds():
  trials = search.sample(SPACE, 500, seed=11)
  for name, (low, high, _) in SPACE.items():
    values = [t[name] for t in trials]
    assert min(values) >= low and max(values) <= high


def test_log_scale_is_uniform_in_log_space():
  """The first 3^4 = 81 values of the log-scaled hparam (base 3, the second name) have
  log10 values one per each of 81 equal bins of [-4, -2]: uniform in log, not in value."""
  trials = search.sample({"a": (0.0, 1.0, "linear"), "lr": (1e-4, 1e-2, "log")}, 81)
  log_lr = np.sort([math.log10(t["lr"]) for t in trials])
  bins = np.floor((log_lr + 4) / 2 * 81 + 1e-9).astype(int)
  np.testing.assert_array_equal(bins, np.arange(81))
  # Uniform in value would put about half the points above 5e-3; uniform in log puts
  # (log10(1e-2) - log10(5e-3)) / (log10(1e-2) - log10(1e-4)) ~ 15% there.
  expected = (-2 - math.log10(5e-3)) / 2
  assert np.mean(10**log_lr > 5e-3) == pytest.approx(expected, abs=0.02)


def test_sample_is_deterministic():
  assert search.sample(SPACE, 10, seed=3) == search.sample(SPACE, 10, seed=3)
  assert search.sample(SPACE, 10, seed=3) != search.sample(SPACE, 10, seed=4)


@pytest.mark.parametrize("entry,words", [
    ((1e-2, 1e-4, "log"), "low"),
    ((0.5, 0.5, "linear"), "low"),
    ((0.0, 1.0, "log"), "log"),
    ((-1.0, 1.0, "log"), "log"),
    ((0.1, 1.0, "exp"), "scale"),
    ((0.1, 1.0), "(low, high, scale)"),
    ((0.1, math.inf, "linear"), "finite"),
])
def test_bad_space_names_the_hparam(entry, words):
  space = {"b1": (0.8, 0.99, "linear"), "bad_hparam": entry}
  with pytest.raises(UserError, match="bad_hparam") as error:
    search.sample(space, 4)
  assert words in str(error.value)


def test_bad_n_and_empty_space_raise():
  with pytest.raises(UserError, match="n=0"):
    search.sample(SPACE, 0)
  with pytest.raises(UserError, match="non-empty"):
    search.sample({}, 3)
