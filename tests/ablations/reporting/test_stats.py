"""The report's statistics against hand-computed values: means, std, t-intervals, paired differences, orderings."""

import math

import pytest

from ablations.reporting.stats import paired, rank_agreement, summarize, t_halfwidth

T2 = 4.302652729749  # t_{0.975} with 2 degrees of freedom (printed tables: 4.303)
T1 = 12.706204736175  # t_{0.975} with 1 degree of freedom (12.706)


def test_mean_std_and_t_interval_of_three_seeds():
    s = summarize([10.0, 12.0, 14.0])
    assert (s.n, s.mean, s.std) == (3, 12.0, 2.0)
    half = T2 * 2.0 / math.sqrt(3)  # 4.968...
    assert s.lo == pytest.approx(12.0 - half, abs=1e-9) and s.hi == pytest.approx(12.0 + half, abs=1e-9)
    assert s.lo == pytest.approx(7.0317, abs=1e-4)


def test_one_value_has_a_mean_but_no_spread_and_none_has_nothing():
    one = summarize([5.5])
    assert one.n == 1 and one.mean == 5.5 and all(math.isnan(v) for v in (one.std, one.lo, one.hi))
    none = summarize([])
    assert none.n == 0 and math.isnan(none.mean)
    assert math.isnan(t_halfwidth(1.0, 1))


def test_paired_difference_uses_only_shared_seeds():
    p = paired({0: 1.0, 1: 3.0, 3: 5.0}, {0: 0.0, 1: 0.0, 2: 9.0})
    assert p.seeds == (0, 1)
    assert (p.diff.mean, p.diff.std) == (2.0, pytest.approx(math.sqrt(2)))
    assert p.diff.lo == pytest.approx(2.0 - T1) and p.diff.hi == pytest.approx(2.0 + T1)
    assert p.verdict == "within noise"


@pytest.mark.parametrize(
    ("level", "verdict", "lo"),
    [
        ({0: 12.0, 1: 15.0, 2: 16.5}, "worse", 2.5 - T2 * 0.5 / math.sqrt(3)),  # diffs 2, 3, 2.5
        ({0: 8.0, 1: 9.0, 2: 11.5}, "better", -2.5 - T2 * 0.5 / math.sqrt(3)),  # diffs -2, -3, -2.5
    ],
)
def test_verdict_follows_the_interval(level, verdict, lo):
    p = paired(level, {0: 10.0, 1: 12.0, 2: 14.0})
    assert p.verdict == verdict and p.diff.n == 3
    assert p.diff.lo == pytest.approx(lo)


def test_fewer_than_two_pairs_gives_no_verdict():
    assert paired({0: 20.0, 1: 1.0}, {0: 10.0, 2: 1.0}).verdict == "n < 2"
    assert paired({1: 1.0}, {0: 1.0}).diff.n == 0


@pytest.mark.parametrize(
    ("ours", "paper", "rho", "words"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0, "same order"),
        ([12, 14.5, 20, 14.25], [22.28, 23.0, 23.47, 23.3], 0.8, "mostly agrees"),  # d = 0, 1, 0, -1
        ([1, 2, 3, 4], [2, 4, 1, 3], 0.0, "does not agree"),  # Σd² = 10 → ρ = 1 - 60/60
        ([1, 2, 3], [3, 2, 1], -1.0, "reversed"),
    ],
)
def test_rank_agreement(ours, paper, rho, words):
    a = rank_agreement(ours, paper)
    assert a.rho == pytest.approx(rho) and a.statement == words and a.n == len(ours)


def test_rank_agreement_says_when_it_cannot_compare():
    assert rank_agreement([1.0], [2.0]).statement == "too few levels to compare"
    assert rank_agreement([1.0, 1.0], [2.0, 3.0]).statement.startswith("cannot rank")
    with pytest.raises(ValueError):
        rank_agreement([1.0], [1.0, 2.0])
