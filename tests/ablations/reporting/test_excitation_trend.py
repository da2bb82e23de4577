"""The depth-trend test of the paper's relative claim (§7.2) on constructed specificities: the blocked permutation
test against scipy's exact Page test and the exact single-seed Spearman distribution, the stage steps, the
bottleneck-width flags, and the markdown that states them."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import page_trend_test, spearmanr

from ablations.reporting.depth_trend import blocked_trend, depth_trend, stage_step
from ablations.reporting.excitation_markdown import trend_lines

RESNET20 = [(s, i) for s in (2, 3, 4) for i in (1, 2, 3)]
BLOCKS = [f"SE_{s}_{i}" for s, i in RESNET20]
HIDDEN = [1, 1, 1, 2, 2, 2, 4, 4, 4]  # r = 16 on 16, 32, 64 channels
FMNIST_SEED0 = [0.389, 0.734, 0.575, 0.866, 0.578, 0.555, 0.801, 0.732, 0.855]  # the median η² the issue quotes


def test_one_seed_is_spearmans_exact_test():
    """One seed: ρ = +0.43 over 9 blocks, and p the share of the 9! depth orders with ρ at least as large."""
    t = blocked_trend([(range(9), FMNIST_SEED0)], permutations=20000)
    assert t.rho == pytest.approx(spearmanr(range(9), FMNIST_SEED0).statistic) == pytest.approx(0.4333, abs=1e-4)
    orders = np.array(list(itertools.permutations(range(9))))  # every depth order of the 9 ranks
    rhos = 1 - 6 * ((orders - np.argsort(np.argsort(FMNIST_SEED0))) ** 2).sum(axis=1) / (9 * 80)
    exact = float(np.mean(rhos >= t.rho - 1e-12))
    assert exact == pytest.approx(0.125, abs=0.002) and t.p == pytest.approx(exact, abs=0.01)


def test_several_seeds_agree_with_pages_exact_test():
    """Mean within-seed ρ is Page's L in another scale, and the null is the same: the p-values agree."""
    rng = np.random.default_rng(1)
    for slope in (0.0, 0.02, 0.05):
        scores = slope * np.arange(9) + rng.normal(0, 0.1, size=(3, 9))
        ours = blocked_trend([(range(9), row) for row in scores], permutations=20000, seed=2)
        page = page_trend_test(scores, method="exact")
        assert ours.p == pytest.approx(page.pvalue, abs=0.01)
        m, n = scores.shape  # L = Σ_j j·R_j ↔ mean ρ = 12 L / (m n (n² − 1)) − 3 (n + 1) / (n − 1)
        assert ours.rho == pytest.approx(12 * page.statistic / (m * n * (n * n - 1)) - 3 * (n + 1) / (n - 1))


def test_the_null_is_relative_not_no_class_information():
    """Every block far above any class-agnostic null, but no order with depth: the trend test finds nothing."""
    rng = np.random.default_rng(3)
    flat = 0.8 + rng.normal(0, 0.05, size=(5, 9))
    assert blocked_trend([(range(9), row) for row in flat]).p > 0.05
    rising = 0.5 + 0.04 * np.arange(9) + rng.normal(0, 0.05, size=(5, 9))
    assert blocked_trend([(range(9), row) for row in rising]).p < 0.001
    falling = rising[:, ::-1]
    assert blocked_trend([(range(9), row) for row in falling]).p > 0.99  # one-sided: H1 is an increase


def test_strata_without_two_values_are_left_out():
    t = blocked_trend([([1, 2, 3], [0.5, 0.5, 0.5]), ([1, 2, 3], [0.1, 0.2, 0.3]), ([1], [0.4])])
    assert t.rho == pytest.approx(1.0) and math.isnan(t.per_stratum[0]) and math.isnan(t.per_stratum[2])
    assert t.p == pytest.approx(1 / 6, abs=0.01)  # one stratum of 3: its increasing order is 1 of 3! orders
    assert math.isnan(blocked_trend([([1, 2], [np.nan, 0.3])]).p)


def test_a_stage_step_exchanges_blocks_within_a_seed():
    scores = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.2, 0.1, 0.3, 0.6, 0.4, 0.5]])
    step = stage_step(scores, [2, 2, 2, 3, 3, 3], 2, 3, permutations=20000)
    assert step.per_seed == pytest.approx([0.3, 0.3]) and step.delta == pytest.approx(0.3)
    # each seed: the top three of six values in the upper stage is 1 of C(6,3) = 20 splits: p = 1/400 for both
    assert step.p == pytest.approx(1 / 400, abs=0.0015)


def test_depth_trend_of_resnet20_flags_the_narrow_bottlenecks():
    one = depth_trend(BLOCKS, RESNET20, HIDDEN, [0], np.array([FMNIST_SEED0]))
    assert one.narrow() == BLOCKS[:6] and one.wide is not None and one.wide.per_stratum == pytest.approx([0.5])
    assert one.stage_means[0] == pytest.approx([0.566, 0.666333, 0.796], abs=1e-6)
    assert one.by_stage.rho == pytest.approx(1.0) and one.by_stage.p == pytest.approx(1 / 6, abs=0.01)
    assert one.within_stage.per_stratum == pytest.approx([0.5, -1.0, 0.5]) and one.within_stage.rho == pytest.approx(0)
    assert [(s.lower, s.upper) for s in one.steps] == [(2, 3), (3, 4)]
    assert one.steps[0].delta == pytest.approx(0.666333 - 0.566, abs=1e-6)
    text = "\n".join(trend_lines(one))
    assert "mean ρ = +0.43 (per stratum +0.43), one-sided p = 0.12" in text
    assert "one-sided p = 0.12" in text and "**no rise with depth shown** at α = 0.05" in text
    assert "its channels' ω² nearly equal; here SE_2_1, SE_2_2, SE_2_3, SE_3_1, SE_3_2, SE_3_3)" in text
    assert "| stage 2 | SE_2_1–SE_2_3 (3) | 1 | 0.566 | — | — |" in text
    assert "With one seed and 3 stages no p of the stage means falls below 1/6." in text
    assert "Within a stage the width is constant: mean ρ = 0.00 (per stratum +0.50, -1.00, +0.50)" in text
    wide = depth_trend(BLOCKS, RESNET20, [4] * 9, [0, 1], np.array([np.arange(9), np.arange(9) + 1.0]) / 10)
    assert wide.narrow() == [] and wide.depth.rho == pytest.approx(1.0) and wide.depth.p < 0.001
    assert "class-specificity **rises with depth**" in "\n".join(trend_lines(wide))
    few = depth_trend(BLOCKS, RESNET20, HIDDEN[:7] + [1, 1], [0], np.array([FMNIST_SEED0]))
    assert few.wide is None and "not testable: fewer than 3 blocks" in "\n".join(trend_lines(few))


def test_a_block_without_a_value_on_one_seed_is_summarised_over_the_others():
    """fmnist's SE_2_2 (one hidden unit) had every gate constant on seed 2: its ω² is undefined there. The summary
    over seeds printed `— ± — [—, —]`; it is the mean over the seeds that have one, and says which are missing."""
    from ablations.reporting.excitation_markdown import _spec_cell
    from ablations.reporting.excitation_seeds import spread

    scores = np.array([FMNIST_SEED0, FMNIST_SEED0, FMNIST_SEED0], dtype=float)
    scores[2, 1] = np.nan
    trend = depth_trend(BLOCKS, RESNET20, HIDDEN, [0, 1, 2], scores, permutations=200)
    mean, sd, lo, hi, k = spread(trend)["SE_2_2"]
    assert (mean, sd, lo, hi, k) == (pytest.approx(0.734), 0.0, 0.734, 0.734, 2)
    assert (
        _spec_cell(spread(trend)["SE_2_2"], 3)
        == "0.734 ± 0.000 [0.734, 0.734] (none on 1 of 3 seeds: its gates constant)"
    )
    assert _spec_cell(spread(trend)["SE_2_1"], 3) == "0.389 ± 0.000 [0.389, 0.389]"
    # the stage step from stage 2 to 3 leaves SE_2_2 out on seed 2 instead of losing the seed's step
    step = next(st for st in trend.steps if st.upper == 3)
    assert len(step.per_seed) == 3 and all(math.isfinite(d) for d in step.per_seed) and math.isfinite(step.p)
    assert step.per_seed[2] == pytest.approx(np.mean(FMNIST_SEED0[3:6]) - np.mean([FMNIST_SEED0[0], FMNIST_SEED0[2]]))
