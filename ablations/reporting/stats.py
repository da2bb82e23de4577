"""The statistics behind a report: mean ± std with a Student-t interval, paired-by-seed differences with a verdict,
and whether two orderings of the same levels agree (Spearman's rank correlation).

Pure functions on plain numbers, so every figure a report prints can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95  # two-sided level of every interval in a report


def t_halfwidth(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t-interval of a mean: t_{(1+c)/2, n-1} · std / √n (NaN for n < 2)."""
    if n < 2:
        return math.nan
    return float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1) and t-interval of the mean; NaN where n is too small."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Summary of `values`: mean of n ≥ 1 values, std and interval of n ≥ 2, all NaN for none."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    half = t_halfwidth(std, n, confidence)
    return Summary(n, mean, std, mean - half, mean + half)


BETTER, WORSE, NOISE, TOO_FEW = "better", "worse", "within noise", "n < 2"


@dataclass(frozen=True)
class Paired:
    """A level minus its comparison level, seed by seed.

    Attributes:
        seeds: the seeds present in both levels, sorted.
        diff: the summary of the per-seed differences (negative = lower error than the comparison).
        verdict: `better` (interval below 0), `worse` (above 0), `within noise`, or `n < 2`.
    """

    seeds: tuple[int, ...]
    diff: Summary
    verdict: str


def paired(level: Mapping[int, float], other: Mapping[int, float], confidence: float = CONFIDENCE) -> Paired:
    """Paired-by-seed difference `level - other` of an error metric over the seeds both have.

    Pairing removes what a seed shares between the two levels (data order, and initialisation where the shapes
    agree); seeds present in only one level are left out rather than compared with another seed's run.
    """
    seeds = tuple(sorted(set(level) & set(other)))
    diff = summarize([level[s] - other[s] for s in seeds], confidence)
    return Paired(seeds, diff, verdict(diff))


def verdict(diff: Summary) -> str:
    """Lower error is better: an interval entirely below 0 is `better`, entirely above 0 `worse`."""
    if diff.n < 2 or math.isnan(diff.lo):
        return TOO_FEW
    if diff.hi < 0:
        return BETTER
    if diff.lo > 0:
        return WORSE
    return NOISE


@dataclass(frozen=True)
class Agreement:
    """How our ordering of a table's levels compares with the paper's.

    Attributes:
        n: levels that have both our value and the paper's.
        rho: Spearman's rank correlation (NaN when n < 2 or one side has all values equal).
        statement: the agreement in words, e.g. "same order" or "does not agree".
    """

    n: int
    rho: float
    statement: str


def rank_agreement(ours: Sequence[float], paper: Sequence[float]) -> Agreement:
    """Spearman's ρ between two sequences of the same levels' errors, with a plain reading of it.

    The reading: ρ = 1 same order, ρ ≥ 0.5 mostly agrees, |ρ| < 0.5 does not agree, ρ ≤ -0.5 mostly reversed,
    ρ = -1 reversed. With n ≤ 3 levels only ρ = ±1 (and 0.5 at n = 3) can occur, so read small tables with care.
    """
    if len(ours) != len(paper):
        raise ValueError(f"{len(ours)} values of ours against {len(paper)} of the paper's")
    n = len(ours)
    if n < 2:
        return Agreement(n, math.nan, "too few levels to compare")
    if len(set(ours)) == 1 or len(set(paper)) == 1:
        return Agreement(n, math.nan, "cannot rank: one side has all values equal")
    rho = float(stats.spearmanr(ours, paper).statistic)
    if rho > 1 - 1e-12:
        words = "same order"
    elif rho >= 0.5:
        words = "mostly agrees"
    elif rho > -0.5:
        words = "does not agree"
    elif rho > -1 + 1e-12:
        words = "mostly reversed"
    else:
        words = "reversed"
    return Agreement(n, rho, words)
