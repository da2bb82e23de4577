"""The family's model and power against scipy and statsmodels: Dunnett's one-way test (`scipy.stats.dunnett`), the
randomised-block fit (`statsmodels` OLS `y ~ C(level) + C(seed)`), the block rule, the equivalence bound and the point
test by hand, verdicts that agree with the simultaneous intervals, and a power solver that converges where
`TTestPower.solve_power` does not."""

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.power import TTestPower

from ablations.reporting.design import BLOCK_P, BLOCKED, ONE_WAY, critical, equicorrelated, fit, verdict
from ablations.reporting.power import noncentrality, paired_d, power, power_at, sd_interval

REF = {0: 10.0, 1: 12.0, 2: 14.0, 3: 11.0}
# a shared seed effect (seed 2 is hard for every level): the block explains most of the spread
BLOCKY = [{0: 11.3, 1: 14.0, 2: 16.8, 3: 12.5}, {0: 11.2, 1: 14.1, 2: 15.8, 3: 13.0}]
# no shared seed effect: the block would spend 2 df for nothing
FLAT_REF = {0: 10.0, 1: 12.0, 2: 14.0}
FLAT = [{0: 13.0, 1: 11.0, 2: 16.8}, {0: 9.0, 1: 14.5, 2: 12.0}, {0: 15.0, 1: 12.5, 2: 13.0}]


def _frame(ref, levels):
    rows = [("ref", s, v) for s, v in ref.items()]
    rows += [(f"L{i}", s, v) for i, lv in enumerate(levels) for s, v in lv.items()]
    return pd.DataFrame(rows, columns=["level", "seed", "y"])


def test_one_way_is_scipys_dunnett_when_the_block_does_not_help():
    f = fit(FLAT_REF, FLAT)
    assert f.model == ONE_WAY and f.seed_p >= BLOCK_P and f.df == 4 * (3 - 1)  # no df spent on the seeds
    samples = [np.array([lv[s] for s in sorted(lv)]) for lv in FLAT]
    want = stats.dunnett(*samples, control=np.array(list(FLAT_REF.values())), rng=np.random.default_rng(1))
    assert [e.p_adjusted for e in f.estimates] == pytest.approx(list(want.pvalue), abs=2e-4)
    ci = want.confidence_interval()
    means = [e.estimate for e in f.estimates]
    assert means == pytest.approx([s.mean() - 12.0 for s in samples])
    # scipy's allowance is found to 1% of the level (its documented tolerance); ours is solved to 1e-6
    assert [e.hi - e.estimate for e in f.estimates] == pytest.approx(list(ci.high - np.array(means)), rel=1e-2)
    assert [e.lo for e in f.estimates] == pytest.approx(list(ci.low), abs=0.05)
    assert f.crit > stats.t.isf(0.025, f.df) and f.crit < stats.t.isf(0.025 / 3, f.df)


def test_blocked_model_is_statsmodels_ols_with_the_seed_and_its_f_test():
    f = fit(REF, BLOCKY)
    ols = smf.ols("y ~ C(level, Treatment('ref')) + C(seed)", _frame(REF, BLOCKY)).fit()
    anova = anova_lm(ols)  # sequential: the seed after the levels, as the rule tests it
    assert f.model == BLOCKED and f.df == ols.df_resid == 6
    assert f.seed_f == pytest.approx(anova.loc["C(seed)", "F"]) and f.seed_p == pytest.approx(
        anova.loc["C(seed)", "PR(>F)"]
    )
    assert f.sd == pytest.approx(math.sqrt(ols.scale))
    for i, e in enumerate(f.estimates):
        term = f"C(level, Treatment('ref'))[T.L{i}]"
        assert e.estimate == pytest.approx(ols.params[term]) and e.se == pytest.approx(ols.bse[term])
        assert e.p == pytest.approx(ols.pvalues[term])
        # simultaneous: the interval is estimate ± crit·se, crit from the bivariate t of the two comparisons
        assert (e.lo, e.hi) == (pytest.approx(e.estimate - f.crit * e.se), pytest.approx(e.estimate + f.crit * e.se))
    r = ols.cov_params().iloc[1:3, 1:3].to_numpy()
    r = r / np.sqrt(np.outer(np.diag(r), np.diag(r)))
    sample = stats.multivariate_t(shape=r, df=6).rvs(400_000, random_state=np.random.default_rng(3))
    assert np.mean(np.abs(sample).max(axis=1) <= f.crit) == pytest.approx(0.95, abs=2e-3)


def test_verdicts_agree_with_the_simultaneous_intervals():
    # each comparison alone rejects (t-test p < 0.05) but not both at once: inconclusive, interval spans 0
    ref = {0: 10.0, 1: 12.0, 2: 14.0}
    levels = [{0: 11.3, 1: 14.0, 2: 16.8}, {0: 11.2, 1: 14.1, 2: 16.8}, {0: 11.2, 1: 13.5, 2: 14.9}]
    f = fit(ref, levels)
    assert f.model == BLOCKED
    for e in f.estimates:
        excludes = e.lo > 0 or e.hi < 0
        assert (e.p_adjusted < 0.05) == excludes and (verdict(e) != "inconclusive") == excludes
    third = f.estimates[2]
    assert third.p < 0.05 < third.p_adjusted and third.lo < 0 < third.hi and verdict(third) == "inconclusive"


def test_one_blocked_comparison_is_the_paired_t_with_its_bounds_and_point_test_by_hand():
    level = {0: 12.0, 1: 15.0, 2: 16.5}  # differences 2, 3, 2.5 against 10, 12, 14
    (e,) = fit({0: 10.0, 1: 12.0, 2: 14.0}, [level]).estimates
    se = 0.5 / math.sqrt(3)
    assert e.estimate == pytest.approx(2.5) and e.se == pytest.approx(se) and e.df == 2
    assert e.p == pytest.approx(stats.ttest_rel([12.0, 15.0, 16.5], [10.0, 12.0, 14.0]).pvalue)
    t95 = 2.919985580355516  # t(0.95, 2): one-sided 95 %
    assert (e.lo1, e.hi1) == (pytest.approx(2.5 - t95 * se), pytest.approx(2.5 + t95 * se))
    assert e.bound == pytest.approx(2.5 + t95 * se) == pytest.approx(3.343, abs=1e-3)
    # TOST at the bound: both one-sided tests sit exactly at p = 0.05
    assert stats.t.sf((e.bound - 2.5) / se, 2) == pytest.approx(0.05)
    # the paper's +0.72 as a point hypothesis: t = 1.78 / 0.2887 = 6.166 on 2 df
    assert e.point_p(0.72) == pytest.approx(2 * stats.t.sf(1.78 / se, 2)) == pytest.approx(0.0253, abs=1e-4)
    assert math.isnan(e.point_p(math.nan))


def test_the_power_solver_converges_where_solve_power_does_not():
    alpha = 0.05 / 3  # Holm's first step over three comparisons, at n = 2 pairs (1 df)
    wrong = TTestPower().solve_power(nobs=2, alpha=alpha, power=0.8, alternative="two-sided")
    assert TTestPower().power(wrong, 2, alpha) < 0.5  # statsmodels returns d = 10 at power 0.29, silently
    d = paired_d(2, alpha)
    crit = stats.t.isf(alpha / 2, 1)
    assert stats.nct.sf(crit, 1, d * math.sqrt(2)) + stats.nct.cdf(-crit, 1, d * math.sqrt(2)) == pytest.approx(0.8)
    assert TTestPower().power(d, 2, alpha) == pytest.approx(0.8)
    # where solve_power is right, the two agree
    assert paired_d(10) == pytest.approx(TTestPower().solve_power(nobs=10, alpha=0.05, power=0.8))
    assert power_at(noncentrality(4, 3.0), 4, 3.0) == pytest.approx(0.8, abs=1e-9)


def test_mde_at_the_corrected_level_and_seeds_with_the_sds_interval():
    f = fit(REF, BLOCKY)
    p = power(f, [4, 4, 4])
    assert p.n == 4 and p.crit == f.crit and p.k == 2
    se = f.sd * math.sqrt(2 / 4)
    assert power_at(p.mde / se, f.df, f.crit) == pytest.approx(0.8)
    assert p.mde > noncentrality(f.df, stats.t.isf(0.025, f.df)) * se  # larger than at the unadjusted 0.05
    lo, hi = sd_interval(f.sd, f.df)
    assert (lo, hi) == (pytest.approx(f.sd * math.sqrt(6 / stats.chi2.ppf(0.975, 6))),
                        pytest.approx(f.sd * math.sqrt(6 / stats.chi2.ppf(0.025, 6))))  # fmt: skip
    n = p.seeds_for(0.5)

    def reach(m, sd=f.sd):
        df = 2 * (m - 1)  # 3 levels blocked
        return power_at(0.5 / (sd * math.sqrt(2 / m)), df, critical(equicorrelated(2), df))

    assert reach(n) >= 0.8 > reach(n - 1)
    a, b = p.seeds_range(0.5)
    assert a <= n <= b and reach(a, lo) >= 0.8 > reach(a - 1, lo) and reach(b, hi) >= 0.8 > reach(b - 1, hi)


def test_no_spread_or_no_results_gives_no_test():
    same = fit({0: 10.0, 1: 12.0}, [{0: 10.6, 1: 12.6}])  # equal differences: the blocked fit is exact
    assert same.model == BLOCKED and not same.testable
    assert power(same, [2, 2]).mde != power(same, [2, 2]).mde  # NaN
