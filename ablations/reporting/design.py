"""The model a table's comparisons are fitted in (one-way, or randomised-block with the seed as block) and the
simultaneous many-to-one inference on it: Dunnett's max-|t| over the comparisons with the reference.

The rule for the block: the seed enters the model only when its F-test (seeds after levels) gives p < BLOCK_P, the
preliminary-test level for pooling a nuisance term into error (Paull 1950, Bancroft 1964): a block that explains
nothing would spend (n_seeds - 1) residual degrees of freedom for nothing, one that does shrinks every interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.regression.linear_model import OLS

from ablations.reporting.stats import ALPHA, BETTER, DIGITS, INCONCLUSIVE, WORSE, printed

BLOCK_P = 0.25  # the seed block is used when its F-test rejects at this level
ONE_WAY, BLOCKED = "one-way", "randomised block (level + seed)"
_FLAT = 1e-9  # a residual SD this small (relative to the errors) is rounding noise: no test
_MVT_SEED = 0  # the multivariate-t integration is quasi-Monte Carlo: a fixed generator makes reruns byte-identical


@dataclass(frozen=True)
class Estimate:
    """One level minus the reference in the fitted model (positive: the level has the higher error).

    Attributes:
        n: the level's observations in the model.
        estimate, se: the model's difference and its standard error, on `df` residual degrees of freedom.
        p: two-sided p-value of this comparison alone.
        p_adjusted: simultaneous p-value over the family (max-|t|; below ALPHA iff the interval excludes 0).
        lo, hi: simultaneous (1 - ALPHA) interval, estimate ∓ crit·se.
        lo1, hi1: one-sided (1 - ALPHA) bounds each way, not adjusted: effects below lo1 or above hi1 are ruled out.
    """

    n: int
    estimate: float
    se: float
    df: int
    p: float
    p_adjusted: float
    lo: float
    hi: float
    lo1: float
    hi1: float

    @property
    def bound(self) -> float:
        """The equivalence bound: the largest |Δ| not ruled out (TOST at ALPHA declares |Δ| < bound)."""
        return max(abs(self.lo1), abs(self.hi1))

    def point_p(self, delta: float) -> float:
        """Two-sided p-value of the point hypothesis Δ = `delta` (NaN without `delta`)."""
        if math.isnan(delta):
            return math.nan
        return float(2 * stats.t.sf(abs(self.estimate - delta) / self.se, self.df))


@dataclass(frozen=True)
class Fit:
    """A family's model: which one, its residual spread, the seed block's F-test and the family's critical value.

    Attributes:
        model: ONE_WAY or BLOCKED (by the BLOCK_P rule).
        groups: levels in the model, the reference included.
        sd, df: residual standard deviation and its degrees of freedom (NaN / 0 when there is no test).
        seed_f, seed_p: F-test of the seed block after the levels (NaN when the blocked model leaves no df).
        crit: the critical |t| of the family (Dunnett's, or Student's for one comparison); NaN without a test.
        split: families the error rate is split over (Bonferroni), 1 for a table.
        estimates: one per compared level, in order; empty without a test.
    """

    model: str
    groups: int
    sd: float
    df: int
    seed_f: float
    seed_p: float
    crit: float
    split: int
    estimates: tuple[Estimate, ...]

    @property
    def testable(self) -> bool:
        return bool(self.estimates)


@functools.lru_cache(maxsize=512)
def _max_t_cdf(x: float, corr: tuple[tuple[float, ...], ...], df: int) -> float:
    """P(max |T_i| ≤ x) for T multivariate t with correlation `corr` and `df` degrees of freedom."""
    if len(corr) == 1:
        return float(1 - 2 * stats.t.sf(x, df))
    k = len(corr)
    mvt = stats.multivariate_t(shape=np.array(corr), df=df, seed=np.random.default_rng(_MVT_SEED))
    return float(mvt.cdf(np.full(k, x), lower_limit=np.full(k, -x)))


def _key(corr: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(round(float(v), 12) for v in row) for row in corr)


@functools.lru_cache(maxsize=512)
def critical(corr: tuple[tuple[float, ...], ...], df: int, alpha: float = ALPHA) -> float:
    """The |t| that max |T_i| exceeds with probability `alpha` (Dunnett's critical value; Student's for k = 1).

    Dunnett's value lies between the unadjusted and the Bonferroni quantile; a root of the (fixed-generator)
    multivariate-t probability inside that bracket is checked to be within 1e-3 of the level."""
    k = len(corr)
    if k == 1:
        return float(stats.t.isf(alpha / 2, df))
    lo, hi = float(stats.t.isf(alpha / 2, df)), float(stats.t.isf(alpha / (2 * k), df)) * 1.05
    c = float(optimize.brentq(lambda x: _max_t_cdf(x, corr, df) - (1 - alpha), lo, hi, xtol=1e-6))
    if abs(_max_t_cdf(c, corr, df) - (1 - alpha)) > 1e-3 * alpha:
        raise ArithmeticError(f"Dunnett's critical value did not converge (k = {k}, df = {df})")
    return c


def equicorrelated(k: int, rho: float = 0.5) -> tuple[tuple[float, ...], ...]:
    """The correlation of k comparisons with a shared reference at equal n (ρ = 1/2)."""
    return _key(np.full((k, k), rho) + (1 - rho) * np.eye(k))


def _design(rows: list[tuple[int, int]], groups: int, seeds: list[int], blocked: bool) -> np.ndarray:
    """Treatment-coded design: intercept, one column per compared level, then (blocked) one per seed after the first."""
    cols = groups - 1 + (len(seeds) - 1 if blocked else 0)
    x = np.zeros((len(rows), 1 + cols))
    x[:, 0] = 1.0
    for i, (g, s) in enumerate(rows):
        if g:
            x[i, g] = 1.0
        if blocked and (j := seeds.index(s)):
            x[i, groups - 1 + j] = 1.0
    return x


def fit(reference: Mapping[int, float], levels: Sequence[Mapping[int, float]], split: int = 1) -> Fit:
    """Each of `levels` (seed → error) against `reference`, simultaneously at ALPHA / `split`.

    Both models are ordinary least squares (`statsmodels` OLS) on treatment-coded designs, so a level's coefficient
    is its difference to the reference; the blocked model adds the seeds and is used by the BLOCK_P rule when it
    is estimable (every level shares seeds with the rest: full rank) and leaves residual df."""
    data = [reference, *levels]
    rows = [(g, s) for g, d in enumerate(data) for s in sorted(d)]
    y = np.array([data[g][s] for g, s in rows])
    seeds = sorted({s for _, s in rows})
    k, groups = len(levels), len(data)
    one = OLS(y, _design(rows, groups, seeds, False)).fit()
    seed_f = seed_p = math.nan
    chosen, model = one, ONE_WAY
    x = _design(rows, groups, seeds, True)
    if len(seeds) > 1 and np.linalg.matrix_rank(x) == x.shape[1] and len(y) > x.shape[1]:
        two = OLS(y, x).fit()
        extra = one.df_resid - two.df_resid
        if two.ssr <= (_FLAT * max(1.0, float(np.abs(y).max()))) ** 2:
            seed_f, seed_p = math.inf, 0.0
        else:
            seed_f = float(((one.ssr - two.ssr) / extra) / (two.ssr / two.df_resid))
            seed_p = float(stats.f.sf(seed_f, extra, two.df_resid))
        if seed_p < BLOCK_P:
            chosen, model = two, BLOCKED
    df = int(round(chosen.df_resid))
    sd = math.sqrt(chosen.ssr / df) if df > 0 else math.nan
    if df < 1 or sd <= _FLAT * max(1.0, float(np.abs(y).max())) or k == 0:
        return Fit(model, groups, sd if df > 0 else math.nan, df, seed_f, seed_p, math.nan, split, ())
    est = np.asarray(chosen.params)[1:groups]
    cov = np.asarray(chosen.cov_params())[1:groups, 1:groups]
    se = np.sqrt(np.diag(cov))
    corr = _key(cov / np.outer(se, se))
    alpha = ALPHA / split
    crit = critical(corr, df, alpha)
    t1 = float(stats.t.isf(ALPHA, df))
    out = []
    for i in range(k):
        t = abs(est[i]) / se[i]
        p = float(2 * stats.t.sf(t, df))
        joint = p if k == 1 else 1 - _max_t_cdf(float(t), corr, df)
        out.append(Estimate(len(levels[i]), float(est[i]), float(se[i]), df, p, min(1.0, split * joint),
                            float(est[i] - crit * se[i]), float(est[i] + crit * se[i]),
                            float(est[i] - t1 * se[i]), float(est[i] + t1 * se[i])))  # fmt: skip
    return Fit(model, groups, sd, df, seed_f, seed_p, crit, split, tuple(out))


def verdict(e: Estimate, digits: int = DIGITS) -> str:
    """`better` / `worse` when the simultaneous interval as printed with `digits` decimals lies entirely below /
    above 0 (and so the simultaneous p < ALPHA); `inconclusive` otherwise.

    Judging the printed bounds keeps a row from reading "+0.60 [0.00, +1.20] worse"."""
    if not e.p_adjusted < ALPHA:
        return INCONCLUSIVE
    if printed(e.hi, digits) < 0:
        return BETTER
    if printed(e.lo, digits) > 0:
        return WORSE
    return INCONCLUSIVE


def correlation(level: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Pearson's r of a level and its reference over the seeds both have: what pairing by seed could remove
    (NaN below 3 shared seeds, where r is ±1 by construction, or when a side is constant)."""
    seeds = sorted(set(level) & set(reference))
    if len(seeds) < 3:
        return math.nan
    a, b = np.array([level[s] for s in seeds]), np.array([reference[s] for s in seeds])
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])
