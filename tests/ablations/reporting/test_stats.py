"""The report's statistics against hand-computed values and direct enumerations: t-intervals, paired differences,
Wilson rates, exact permutation p-values, ties and signs; the post-sweep mean ± std cell. The family's model, its
verdicts and its power: test_stats_design.py."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from ablations.reporting.fmt import delta, mean_sd_ci, mean_std, p_is
from ablations.reporting.stats import (
    ordering,
    paired,
    rank_agreement,
    summarize,
    wilson,
)

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
    flat = summarize([3.0, 3.0, 3.0])
    assert (flat.std, flat.lo, flat.hi) == (0.0, 3.0, 3.0)


def test_paired_difference_is_scipys_paired_t_over_shared_seeds():
    p = paired({0: 1.0, 1: 3.0, 3: 5.0}, {0: 0.0, 1: 0.0, 2: 9.0})
    assert p.seeds == (0, 1)
    assert (p.diff.mean, p.diff.std) == (2.0, pytest.approx(math.sqrt(2)))
    assert p.diff.lo == pytest.approx(2.0 - T1) and p.diff.hi == pytest.approx(2.0 + T1)
    # t = 2 / (√2/√2) = 2 with 1 df: p = 2·(1 - F_t1(2)) = 0.2952
    assert p.p == pytest.approx(0.295167, abs=1e-6)


def test_fewer_than_two_pairs_gives_no_test():
    one = paired({0: 20.0, 1: 1.0}, {0: 10.0, 2: 1.0})
    assert one.diff.n == 1 and math.isnan(one.p)
    assert paired({1: 1.0}, {0: 1.0}).diff.n == 0


def test_identical_differences_give_no_verdict_even_with_float_noise():
    # 10.35 - 9.75 and 11.15 - 10.55 are both 0.60 on paper but differ in the last bits: scipy alone would
    # report t = ±inf, p = 0 and the zero-width interval [0.60, 0.60], a "verdict" from n = 2.
    p = paired({0: 10.35, 1: 11.15}, {0: 9.75, 1: 10.55})
    assert p.degenerate and not p.testable and math.isnan(p.p)
    assert p.diff.lo == p.diff.hi == pytest.approx(0.6)


def test_wilson_rate_is_statsmodels():
    r = wilson(1, 3)
    assert r.rate == pytest.approx(1 / 3)
    # Wilson by hand: (p + z²/2n ± z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.95996
    z, n, ph = 1.959963984540054, 3, 1 / 3
    centre, half = ph + z * z / (2 * n), z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    assert (r.lo, r.hi) == (
        pytest.approx((centre - half) / (1 + z * z / n)),
        pytest.approx((centre + half) / (1 + z * z / n)),
    )
    assert (r.lo, r.hi) == (pytest.approx(0.0615, abs=1e-4), pytest.approx(0.7923, abs=1e-4))
    zero = wilson(0, 3)
    assert zero.lo == pytest.approx(0.0, abs=1e-12) and zero.hi == pytest.approx(0.5615, abs=1e-4)
    assert math.isnan(wilson(0, 0).rate)


def _enumerated_p(ours, paper):
    rho = sp.spearmanr(ours, paper).statistic
    null = [sp.spearmanr(ours, perm).statistic for perm in itertools.permutations(paper)]
    return sum(r >= rho - 1e-12 for r in null) / len(null)


@pytest.mark.parametrize(
    ("ours", "paper"),
    [
        ([12.0, 14.5, 20.0, 14.25], [22.28, 23.0, 23.47, 23.3]),  # one swap: ρ = 0.8
        ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 3.0, 5.0, 4.0]),
        ([1.0, 2.0, 2.0, 4.0, 5.0, 3.0], [22.29, 22.25, 22.26, 22.28, 22.72, 23.3]),  # a tie in ours
        ([5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]),  # reversed
    ],
)
def test_permutation_p_value_is_the_exact_enumeration(ours, paper):
    a = rank_agreement(ours, paper)
    assert a.rho == pytest.approx(sp.spearmanr(ours, paper).statistic)
    assert a.p == pytest.approx(_enumerated_p(ours, paper))


def test_agreement_values_by_hand_and_below_four_levels():
    a = rank_agreement([12.0, 14.5, 20.0, 14.25], [22.28, 23.0, 23.47, 23.3])
    # ρ = 1 - Σd²/10 ≥ 0.8 ⇔ Σd² ≤ 2: the identity and the 3 adjacent swaps of the 24 orderings
    assert a.rho == pytest.approx(0.8) and a.p == pytest.approx(4 / 24)
    assert a.statement == "not distinguishable from a random ordering"
    same = rank_agreement([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert same.p == pytest.approx(1 / 120) and same.statement == "agrees beyond chance"
    three = rank_agreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert three.rho == pytest.approx(-1.0) and math.isnan(three.p) and three.statement.startswith("not testable")
    two = rank_agreement([1.0, 2.0], [1.0, 2.0])  # a coin flip: never a finding
    assert math.isnan(two.p) and "not testable with 2 levels" in two.statement
    assert rank_agreement([1.0], [2.0]).statement == "too few levels to compare"
    assert rank_agreement([1.0, 1.0, 1.0, 1.0], [1, 2, 3, 4]).statement.startswith("cannot rank")
    with pytest.raises(ValueError):
        rank_agreement([1.0], [1.0, 2.0])


def test_large_tables_draw_a_seeded_sample_of_orderings():
    ours = list(np.arange(9.0))
    a, b = rank_agreement(ours, ours), rank_agreement(ours, ours)
    assert a.p == b.p and a.p < 0.001


def test_ties_are_shown_as_ties():
    assert ordering(["a", "b", "c", "d"], [2.0, 1.0, 2.0, 3.0]) == "b < a = c < d"


def test_mean_std_prints_the_post_sweep_summary_cells():
    assert mean_std(pd.Series([], dtype=float)) == "—"
    assert mean_std(pd.Series([12.345], dtype=float)) == "12.35 (1 seed)"
    assert mean_std(pd.Series([10.0, 12.0, 14.0], dtype=float)) == "12.00 ± 2.00"
    assert mean_std(pd.Series([10.0, None, 14.0], dtype=float)) == "12.00 ± 2.83"  # a missing metric is skipped


def test_below_three_values_the_cells_print_the_values_not_a_t_interval():
    # two seeds: the mean and both values (the t-interval over 1 df would be [-5.71, +19.71] for 6 and 8)
    assert mean_sd_ci(summarize([6.0, 8.0])) == "7.00 (6.00, 8.00; n = 2)"
    assert delta(paired({0: 8.0, 1: 7.0}, {0: 6.0, 1: 6.5}).diff) == "+1.25 (+0.50, +2.00; n = 2)"
    # equal values (float noise included) are said as such, never a zero-width interval
    assert delta(paired({0: 10.35, 1: 11.15}, {0: 9.75, 1: 10.55}).diff) == "+0.60 (all 2 equal)"
    assert mean_sd_ci(summarize([3.0, 3.0, 3.0])) == "3.00 (all 3 equal)"
    assert delta(paired({0: 2.0}, {0: 1.0}).diff) == "+1.00 (n = 1)" and mean_sd_ci(summarize([])) == "—"
    # from three different values on, the interval: 2 ± 1 → [2 ∓ 4.303·1/√3]
    assert delta(paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}).diff) == "+2.00 [-0.48, +4.48] (n = 3)"


def test_a_p_value_in_a_sentence_reads_as_one():
    # the fmnist report said "the paper's +1.02 is rejected (p = < 0.001)"
    assert p_is(0.0004) == "p < 0.001" and p_is(0.0431) == "p = 0.043" and p_is(float("nan")) == "p = —"
