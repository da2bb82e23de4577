"""What a table's comparisons could detect, at the level its verdicts use: the power of a two-sided t-test against
the family's critical value from Student's noncentral t, solved by a bracketed root that is checked, with the seeds
needed and their interval from the residual SD's chi-square interval.

statsmodels' `TTestPower.solve_power` is not used: at n = 2 and α < 0.05 it returns a wrong answer without a
warning (e.g. d = 10 with power 0.29 at α = 0.05/3), the region a corrected family lands in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize, stats

from ablations.reporting.design import BLOCKED, Fit, critical, equicorrelated
from ablations.reporting.stats import ALPHA, CONFIDENCE, POWER

MAX_SEEDS = 100_000  # seeds-needed beyond this is reported as None (no finite answer worth printing)


def power_at(noncentrality: float, df: int, crit: float) -> float:
    """P(|T| > crit) for T ~ noncentral t(df, noncentrality ≥ 0): the power of a two-sided test at critical value
    crit. scipy's far lower tail can be NaN; it is bounded by P(T < 0) = Φ(-noncentrality), so it is 0 where that is
    below 1e-10."""
    lower = float(stats.nct.cdf(-crit, df, noncentrality))
    if math.isnan(lower):
        if stats.norm.cdf(-noncentrality) > 1e-10:
            raise ArithmeticError(f"noncentral t tail undefined (df = {df}, λ = {noncentrality})")
        lower = 0.0
    return float(stats.nct.sf(crit, df, noncentrality)) + lower


def noncentrality(df: int, crit: float, power: float = POWER) -> float:
    """The noncentrality λ at which a two-sided t-test on `df` at critical value `crit` has `power`.

    Raises:
        ArithmeticError: the root, once found, does not give `power` (checked, never trusted).
    """
    hi = max(1.0, crit)
    while power_at(hi, df, crit) < power:
        hi *= 2
        if hi > 1e8:
            raise ArithmeticError(f"no noncentrality reaches power {power} (df = {df}, crit = {crit})")
    lam = float(optimize.brentq(lambda x: power_at(x, df, crit) - power, 0.0, hi, xtol=1e-10, rtol=1e-12))
    if abs(power_at(lam, df, crit) - power) > 1e-6:
        raise ArithmeticError(f"the power solver did not converge (df = {df}, crit = {crit})")
    return lam


def paired_d(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Cohen's d a paired t-test over n pairs detects at two-sided `alpha` with `power` (what `solve_power` is
    asked for)."""
    return noncentrality(n - 1, float(stats.t.isf(alpha / 2, n - 1)), power) / math.sqrt(n)


@dataclass(frozen=True)
class Power:
    """What a family's comparisons could detect, from its model's residual spread.

    Attributes:
        n: seeds per level the estimate is for (the family's most common n, ties: the smaller).
        model, groups, k, split: the family's model, its levels (reference included), comparisons and Bonferroni
            split, which fix its residual df and critical value at any n.
        sd, df: the residual SD of the model and its df; sd_lo, sd_hi: its CONFIDENCE chi-square interval.
        crit: the family's critical |t| at n (the one its verdicts use).
        mde: the smallest |Δ| one comparison detects with POWER at that critical value (NaN without a spread).
    """

    n: int
    model: str
    groups: int
    k: int
    split: int
    sd: float
    df: int
    sd_lo: float
    sd_hi: float
    crit: float
    mde: float

    def df_at(self, n: int) -> int:
        return (self.groups - 1) * (n - 1) if self.model == BLOCKED else self.groups * (n - 1)

    def _detects(self, effect: float, sd: float, n: int) -> bool:
        df = self.df_at(n)
        crit = critical(equicorrelated(self.k), df, ALPHA / self.split)
        return power_at(effect / (sd * math.sqrt(2 / n)), df, crit) >= POWER

    def seeds_for(self, effect: float, sd: float | None = None) -> int | None:
        """Seeds per level for one comparison to detect |Δ| = `effect` with POWER at the family's level, at the
        model's SD (or `sd`); None when the spread is unknown or zero or the answer exceeds MAX_SEEDS."""
        sd = self.sd if sd is None else sd
        if math.isnan(sd) or sd <= 0 or effect <= 0 or self.k == 0:
            return None
        if self._detects(effect, sd, 2):
            return 2
        lo, hi = 2, 4  # power grows with n: double until detected, then bisect
        while not self._detects(effect, sd, hi):
            lo, hi = hi, hi * 2
            if hi > MAX_SEEDS:
                return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._detects(effect, sd, mid) else (mid, hi)
        return hi

    def seeds_range(self, effect: float) -> tuple[int | None, int | None]:
        """Seeds needed at the ends of the SD's interval: what the SD's own uncertainty leaves open."""
        return self.seeds_for(effect, self.sd_lo), self.seeds_for(effect, self.sd_hi)


def sd_interval(sd: float, df: int) -> tuple[float, float]:
    """The CONFIDENCE interval of a normal SD on `df` degrees of freedom: sd·√(df / χ²)."""
    if df < 1 or math.isnan(sd):
        return math.nan, math.nan
    a = 1 - CONFIDENCE
    return sd * math.sqrt(df / stats.chi2.isf(a / 2, df)), sd * math.sqrt(df / stats.chi2.ppf(a / 2, df))


def power(f: Fit | None, sizes: list[int]) -> Power:
    """The family's power at its most common n per level; an empty Power without a fitted spread."""
    sizes = [s for s in sizes if s >= 2]
    if f is None or not sizes or math.isnan(f.sd) or f.df < 1:
        model, groups, k = (f.model, f.groups, f.groups - 1) if f else ("", 0, 0)
        return Power(0, model, groups, k, 1, math.nan if f is None else f.sd, 0 if f is None else f.df,
                     math.nan, math.nan, math.nan, math.nan)  # fmt: skip
    n = min(set(sizes), key=lambda m: (-sizes.count(m), m))
    k = f.groups - 1
    lo, hi = sd_interval(f.sd, f.df)
    if f.sd == 0 or not f.testable:
        return Power(n, f.model, f.groups, k, f.split, f.sd, f.df, lo, hi, math.nan, math.nan)
    mde = noncentrality(f.df, f.crit) * f.sd * math.sqrt(2 / n)
    return Power(n, f.model, f.groups, k, f.split, f.sd, f.df, lo, hi, f.crit, mde)
