"""The inference of a report: from its gathered tables to every number the markdown, LaTeX, CSV and figures show,
computed once.

The rules (stated in the report's legend): each non-reference level is compared with its reference by a paired
t-test over the seeds both finished (primary metric: test top-1 error). Within a table, Holm's step-down
correction runs over those comparisons. The comparison of a no-SE level with its SE reference (does SE help at
all) is the same contrast in every table that holds it, so it is tested once per report, in a family of its own
(Holm over the distinct contrasts, usually one). A verdict needs a test (n ≥ 2, differences not all equal), an
adjusted p below 0.05 and a printed interval that excludes 0; anything else is inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ablations.outcomes import CellState
from ablations.reporting.paper_match import TOP1, TOP5, paper_value
from ablations.reporting.results import Factor, Level
from ablations.reporting.stats import (
    Agreement,
    Paired,
    Power,
    Rate,
    Summary,
    holm,
    paired,
    power,
    printed,
    rank_agreement,
    sign_agreement,
    summarize,
    verdict,
    wilson,
)

VAL1 = "final_val_top1_err"
TABLE, CONTRAST = "table", "SE vs no SE"  # the two families of comparisons


@dataclass(frozen=True)
class Comparison:
    """One level against its reference on test top-1 error.

    Attributes:
        pair: the paired difference level - reference.
        p_adjusted: Holm-adjusted p-value within `family` (NaN without a test).
        verdict: better / worse / inconclusive, or why there is no test.
        family: TABLE (this table's Holm family) or CONTRAST (the report's SE-vs-no-SE family).
    """

    pair: Paired
    p_adjusted: float
    verdict: str
    family: str


@dataclass(frozen=True)
class Row:
    """Everything a report prints about one level."""

    level: Level
    top1: Summary
    top5: Summary
    val1: Summary
    at_chance: Summary  # test top-1 with every diverged run counted at the chance error
    divergence: Rate  # diverged of the runs that produced a result (finished + diverged)
    comparison: Comparison | None  # None for the reference itself and for a level without one
    paper_delta: float  # the paper's value of this level minus that of its reference (NaN when not both)
    sign: str  # stats.sign_agreement of our Δ and the paper's


@dataclass(frozen=True)
class Table:
    """A factor's rows with its power and its ordering against the paper per metric."""

    factor: Factor
    rows: list[Row]
    power: Power
    agreement: dict[str, tuple[list[Level], Agreement]]


@dataclass(frozen=True)
class Analysis:
    tables: list[Table]
    contrasts: list[tuple[Level, Level, Comparison]]  # (no-SE level, SE reference, comparison), once each


def _is_contrast(level: Level) -> bool:
    """A no-SE level compared with an SE reference: the does-SE-help-at-all contrast."""
    return level.is_baseline and level.reference is not None and not level.is_reference


def _pair(level: Level) -> Paired | None:
    ref = level.reference
    if ref is None or ref is level:
        return None
    return paired(level.values(TOP1), ref.values(TOP1))


def _contrasts(factors: list[Factor]) -> dict[tuple[str, str], tuple[Level, Level, Comparison]]:
    """The distinct SE-vs-no-SE contrasts of the report, keyed by (no-SE, reference) config hash, Holm over them."""
    found: dict[tuple[str, str], tuple[Level, Level, Paired]] = {}
    for f in factors:
        for lv in f.levels:
            if _is_contrast(lv) and (pair := _pair(lv)) is not None and lv.reference is not None:
                key = (lv.config_hash, lv.reference.config_hash)
                found.setdefault(key, (lv, lv.reference, pair))
    adjusted = holm([pair.p for _, _, pair in found.values()])
    return {key: (lv, ref, Comparison(pair, p, verdict(pair, p), CONTRAST))
            for (key, (lv, ref, pair)), p in zip(found.items(), adjusted, strict=True)}  # fmt: skip


def _agreement(levels: list[Level], metric: str) -> tuple[list[Level], Agreement]:
    """Our printed mean against the paper's value over the design levels that have both (equal printed means
    are ties)."""
    both = [lv for lv in levels if lv.summary(metric).n > 0 and paper_value(lv.paper, metric) is not None]
    ours = [printed(lv.summary(metric).mean) for lv in both]
    return both, rank_agreement(ours, [paper_value(lv.paper, metric) or math.nan for lv in both])


def _paper_delta(level: Level) -> float:
    mine = paper_value(level.paper, TOP1)
    ref = paper_value(level.reference.paper, TOP1) if level.reference is not None else None
    if mine is None or ref is None or level.reference is level:
        return math.nan
    return mine - ref


def _at_chance(level: Level) -> Summary:
    chance = 100.0 * (1 - 1 / level.classes())
    values = [v for c in level.cells if c.state == CellState.FINISHED and (v := c.metric(TOP1)) is not None]
    return summarize(values + [chance] * level.count(CellState.DIVERGED))


def _row(level: Level, comparison: Comparison | None) -> Row:
    delta = _paper_delta(level)
    ours = comparison.pair.diff.mean if comparison is not None and comparison.pair.diff.n else math.nan
    diverged = level.count(CellState.DIVERGED)
    results = diverged + level.count(CellState.FINISHED)
    return Row(level, level.summary(TOP1), level.summary(TOP5), level.summary(VAL1), _at_chance(level),
               wilson(diverged, results), comparison, delta, sign_agreement(ours, delta))  # fmt: skip


def _table(factor: Factor, contrasts: dict[tuple[str, str], tuple[Level, Level, Comparison]]) -> Table:
    pairs = [(lv, pair) for lv in factor.levels if (pair := _pair(lv)) is not None]
    family = [(lv, pair) for lv, pair in pairs if not _is_contrast(lv)]
    adjusted = holm([pair.p for _, pair in family])
    comparisons = {id(lv): Comparison(pair, p, verdict(pair, p), TABLE)
                   for (lv, pair), p in zip(family, adjusted, strict=True)}  # fmt: skip
    for lv, _ in pairs:
        if _is_contrast(lv) and lv.reference is not None:
            comparisons[id(lv)] = contrasts[(lv.config_hash, lv.reference.config_hash)][2]
    rows = [_row(lv, comparisons.get(id(lv))) for lv in factor.levels]
    agreement = {m: _agreement(factor.design(), m) for m in (TOP1, TOP5)}
    return Table(factor, rows, power([pair.diffs for _, pair in pairs]), agreement)


def analyse(factors: list[Factor]) -> Analysis:
    """Every table's rows, power and agreement, and the report's SE-vs-no-SE contrasts."""
    contrasts = _contrasts(factors)
    return Analysis([_table(f, contrasts) for f in factors], list(contrasts.values()))
