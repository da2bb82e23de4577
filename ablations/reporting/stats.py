"""The statistics behind a report, as pure functions on plain numbers: mean ± std with a Student-t interval,
paired-by-seed differences, divergence rates, and whether our ordering of a table's levels agrees with the paper's.

The tests are scipy's and statsmodels' (`ttest_rel`, `permutation_test`, `proportion_confint`); the model a table's
comparisons are judged in is `design.py`, their power `power.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95  # two-sided level of every interval in a report
ALPHA = 1 - CONFIDENCE  # two-sided level of every test
POWER = 0.8  # power of the minimum detectable effect and of the seeds-needed estimate
EFFECTS = (0.5, 1.0)  # points of error the seeds-needed estimates are for
DIGITS = 2  # decimals a report prints errors and differences with: verdicts judge the printed bounds
MIN_RANKED = 4  # levels an exact permutation test of an ordering needs for p < 0.05 to be possible (1/4! = 0.042)
EXACT_UP_TO = 8  # levels up to which the permutation test enumerates every ordering (8! = 40320)
_FLAT = 1e-9  # a spread this small (relative to the values) is rounding noise in equal differences


def printed(x: float, digits: int = DIGITS) -> float:
    """`x` as a report prints it (fixed decimals), read back: what a reader judges."""
    return float(format(x, f".{digits}f"))


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1) and t-interval of the mean; NaN where n is too small."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Summary of `values`: mean of n ≥ 1 values, std and interval (`scipy.stats.t.interval`) of n ≥ 2."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    if std <= _FLAT * max(1.0, abs(mean)):
        return Summary(n, mean, 0.0, mean, mean)
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(n, mean, std, float(lo), float(hi))


# -- paired differences and verdicts ------------------------------------------------------------------------------

BETTER, WORSE, INCONCLUSIVE = "better", "worse", "inconclusive"
TOO_FEW = "no test (n < 2)"
IDENTICAL = "no test (identical differences)"


@dataclass(frozen=True)
class Paired:
    """A level minus its comparison level, seed by seed (negative = lower error than the comparison).

    Attributes:
        seeds: the seeds present in both levels, sorted.
        diffs: the per-seed differences, in seed order.
        diff: their mean, std and the paired t-interval (`ttest_rel`).
        p: two-sided p-value of the paired t-test; NaN when there is no test (n < 2 or identical differences).
    """

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    diff: Summary
    p: float

    @property
    def degenerate(self) -> bool:
        """Every seed gave the same difference: a zero-width interval that says nothing about the spread."""
        return self.diff.n >= 2 and self.diff.std == 0.0

    @property
    def testable(self) -> bool:
        return self.diff.n >= 2 and not self.degenerate


def paired(level: Mapping[int, float], other: Mapping[int, float], confidence: float = CONFIDENCE) -> Paired:
    """Paired-by-seed difference `level - other` of an error metric over the seeds both have.

    What each seed shows (the per-seed table, "worse on every seed"); the verdicts come from the family's model
    (`design.fit`). Seeds present in only one level are left out rather than compared with another seed's run.
    Equal differences (common with errors in 0.05-point steps) give no test: their zero spread is an accident of n.
    """
    seeds = tuple(sorted(set(level) & set(other)))
    a = [level[s] for s in seeds]
    b = [other[s] for s in seeds]
    diffs = tuple(x - y for x, y in zip(a, b, strict=True))
    diff = summarize(diffs, confidence)
    if diff.n < 2 or diff.std == 0.0:
        return Paired(seeds, diffs, diff, math.nan)
    result = stats.ttest_rel(a, b)
    ci = result.confidence_interval(confidence)
    interval = Summary(diff.n, diff.mean, diff.std, float(ci.low), float(ci.high))
    return Paired(seeds, diffs, interval, float(result.pvalue))


# -- divergence -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """k of n with its Wilson interval (`proportion_confint(method="wilson")`), as fractions."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else math.nan


def wilson(k: int, n: int) -> Rate:
    if n == 0:
        return Rate(k, n, math.nan, math.nan)
    lo, hi = proportion_confint(k, n, alpha=ALPHA, method="wilson")
    return Rate(k, n, float(lo), float(hi))


# -- orderings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How our ordering of a table's levels compares with the paper's.

    Attributes:
        n: levels that have both our value and the paper's.
        rho: Spearman's rank correlation, ties ranked by their average (NaN when n < 2 or a side is all ties).
        p: one-sided exact permutation p-value of ρ (the share of the n! orderings that agree at least as well);
            NaN when not testable (n < MIN_RANKED).
        statement: the result in words.
    """

    n: int
    rho: float
    p: float
    statement: str


def _rho(rx: np.ndarray) -> object:
    """ρ of fixed ranks `rx` with permuted ranks (vectorised: Pearson's r of ranks is Spearman's ρ)."""
    a = rx - rx.mean()

    def statistic(b: np.ndarray, axis: int = -1) -> np.ndarray:
        c = b - b.mean(axis=axis, keepdims=True)
        return (c * a).sum(axis=axis) / np.sqrt((a * a).sum() * (c * c).sum(axis=axis))

    return statistic


def rank_agreement(ours: Sequence[float], paper: Sequence[float], seed: int = 0) -> Agreement:
    """Spearman's ρ between two sequences of the same levels' errors, with an exact permutation p-value.

    The test (`permutation_test`, `permutation_type="pairings"`) enumerates every ordering up to EXACT_UP_TO
    levels, else draws 100 000 with a seeded generator. Below MIN_RANKED levels no ordering can reach p < 0.05, so
    none is tested: at 2 levels the "agreement" is a coin flip.
    """
    if len(ours) != len(paper):
        raise ValueError(f"{len(ours)} values of ours against {len(paper)} of the paper's")
    n = len(ours)
    if n < 2:
        return Agreement(n, math.nan, math.nan, "too few levels to compare")
    if len(set(ours)) == 1 or len(set(paper)) == 1:
        return Agreement(n, math.nan, math.nan, "cannot rank: one side has all values tied")
    rx, ry = stats.rankdata(ours), stats.rankdata(paper)
    rho = float(_rho(rx)(ry))  # type: ignore[operator]
    if n < MIN_RANKED:
        return Agreement(n, rho, math.nan, f"not testable with {n} levels (an exact test needs {MIN_RANKED})")
    resamples = np.inf if n <= EXACT_UP_TO else 100_000
    res = stats.permutation_test((ry,), _rho(rx), permutation_type="pairings", alternative="greater",
                                 n_resamples=resamples, vectorized=True, rng=np.random.default_rng(seed))  # fmt: skip
    p = float(res.pvalue)
    words = "agrees beyond chance" if p < ALPHA else "not distinguishable from a random ordering"
    return Agreement(n, rho, p, words)


def ordering(labels: Sequence[str], values: Sequence[float]) -> str:
    """Labels from lowest to highest value, equal values joined by `=` (ties shown as ties)."""
    pairs = sorted(zip(values, labels, strict=True), key=lambda p: p[0])
    out: list[str] = []
    for i, (value, label) in enumerate(pairs):
        out.append(("" if i == 0 else " = " if value == pairs[i - 1][0] else " < ") + label)
    return "".join(out)
