"""The inference of a report: from its gathered tables to every number the markdown, LaTeX, CSV and figures show,
computed once.

The rules (stated in the report's legend): a table's levels are compared with its reference on test top-1 error in
one model (`design.fit`: one-way, or randomised block when the seed F-test shows the block helps), all at once by
Dunnett's max-|t|: one family per table, its intervals simultaneous, a verdict iff the interval excludes 0. The
comparison of a no-SE level with its SE reference (does SE help at all) is the same contrast in every table that
holds it, so it is tested once per report, in a family of its own (Bonferroni over the distinct contrasts, usually
one). A level needs two results to enter a family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ablations.outcomes import CellState
from ablations.reporting.design import Estimate, Fit, correlation, fit, verdict
from ablations.reporting.paper_match import TOP1, TOP5, paper_value
from ablations.reporting.power import Power, power
from ablations.reporting.results import Factor, Level
from ablations.reporting.stats import (
    IDENTICAL,
    TOO_FEW,
    Agreement,
    Paired,
    Rate,
    Summary,
    paired,
    printed,
    rank_agreement,
    summarize,
    wilson,
)

VAL1 = "final_val_top1_err"
TABLE, CONTRAST = "table", "SE vs no SE"  # the two families of comparisons
NO_DF = "no test (no residual df)"


@dataclass(frozen=True)
class Comparison:
    """One level against its reference on test top-1 error.

    Attributes:
        pair: the per-seed differences level - reference (what each seed shows).
        estimate: the difference in the family's model, with its simultaneous interval, one-sided bounds and
            p-values; None without a test.
        fit: the family's model (shared by every comparison of the family); None when the level is not in one.
        verdict: better / worse / inconclusive, or why there is no test.
        family: TABLE (this table's family) or CONTRAST (the report's SE-vs-no-SE family).
        correlation: Pearson's r of the level and the reference across seeds (what pairing could remove).
    """

    pair: Paired
    estimate: Estimate | None
    fit: Fit | None
    verdict: str
    family: str
    correlation: float

    @property
    def p_adjusted(self) -> float:
        """The simultaneous p-value over the family (NaN without a test)."""
        return self.estimate.p_adjusted if self.estimate is not None else math.nan


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
    paper_p: float  # two-sided p of our Δ = the paper's Δ as a point hypothesis (NaN without both)


@dataclass(frozen=True)
class Table:
    """A factor's rows with its family's model and power and its ordering against the paper per metric."""

    factor: Factor
    rows: list[Row]
    fit: Fit | None  # the table family's model (the contrast's where the table holds no other comparison)
    power: Power
    agreement: dict[str, tuple[list[Level], Agreement]]


@dataclass(frozen=True)
class Analysis:
    tables: list[Table]
    contrasts: list[tuple[Level, Level, Comparison]]  # (no-SE level, SE reference, comparison), once each


def _is_contrast(level: Level) -> bool:
    """A no-SE level compared with an SE reference: the does-SE-help-at-all contrast."""
    return level.is_baseline and level.reference is not None and not level.is_reference


def _compared(level: Level) -> bool:
    return level.reference is not None and level.reference is not level


def _family(levels: list[Level], family: str, split: int = 1) -> tuple[dict[int, Comparison], Fit | None]:
    """Comparisons of `levels` (sharing one reference) with it in one fitted model, simultaneously at ALPHA/split."""
    ref = levels[0].reference
    assert ref is not None
    rv = ref.values(TOP1)
    pairs = {id(lv): paired(lv.values(TOP1), rv) for lv in levels}
    tested = [lv for lv in levels if len(lv.values(TOP1)) >= 2] if len(rv) >= 2 else []
    f = fit(rv, [lv.values(TOP1) for lv in tested], split) if tested else None
    out = {}
    for lv in levels:
        r = correlation(lv.values(TOP1), rv)
        if f is not None and f.testable and lv in tested:
            e = f.estimates[tested.index(lv)]
            out[id(lv)] = Comparison(pairs[id(lv)], e, f, verdict(e), family, r)
        else:
            why = TOO_FEW if lv not in tested or f is None else NO_DF if f.df < 1 else IDENTICAL
            out[id(lv)] = Comparison(pairs[id(lv)], None, f if lv in tested else None, why, family, r)
    return out, f


def _contrasts(factors: list[Factor]) -> dict[tuple[str, str], tuple[Level, Level, Comparison]]:
    """The distinct SE-vs-no-SE contrasts of the report, keyed by (no-SE, reference) config hash, each in its own
    model, Bonferroni over them."""
    found: dict[tuple[str, str], Level] = {}
    for f in factors:
        for lv in f.levels:
            if _is_contrast(lv) and lv.reference is not None:
                found.setdefault((lv.config_hash, lv.reference.config_hash), lv)
    testable = sum(len(lv.values(TOP1)) >= 2 and lv.reference is not None and len(lv.reference.values(TOP1)) >= 2
                   for lv in found.values())  # fmt: skip
    out = {}
    for key, lv in found.items():
        comparison = _family([lv], CONTRAST, max(1, testable))[0][id(lv)]
        out[key] = (lv, lv.reference, comparison)
    return out  # type: ignore[return-value]


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
    e = comparison.estimate if comparison is not None else None
    diverged = level.count(CellState.DIVERGED)
    results = diverged + level.count(CellState.FINISHED)
    return Row(level, level.summary(TOP1), level.summary(TOP5), level.summary(VAL1), _at_chance(level),
               wilson(diverged, results), comparison, delta, e.point_p(delta) if e else math.nan)  # fmt: skip


def _table(factor: Factor, contrasts: dict[tuple[str, str], tuple[Level, Level, Comparison]]) -> Table:
    groups: dict[int, list[Level]] = {}  # the table's compared levels by reference (one, unless the grid has two)
    for lv in factor.levels:
        if _compared(lv) and not _is_contrast(lv):
            groups.setdefault(id(lv.reference), []).append(lv)
    split = max(1, len(groups))
    comparisons: dict[int, Comparison] = {}
    fits = []
    for levels in groups.values():
        found, f = _family(levels, TABLE, split)
        comparisons |= found
        if f is not None:
            fits.append((f, [levels[0].reference, *levels]))
    for lv in factor.levels:
        if _is_contrast(lv) and lv.reference is not None:
            c = contrasts[(lv.config_hash, lv.reference.config_hash)][2]
            comparisons[id(lv)] = c
            if not fits and c.fit is not None:
                fits.append((c.fit, [lv.reference, lv]))
    rows = [_row(lv, comparisons.get(id(lv))) for lv in factor.levels]
    agreement = {m: _agreement(factor.design(), m) for m in (TOP1, TOP5)}
    f, levels = max(fits, key=lambda x: x[0].groups) if fits else (None, [])
    table_power = power(f, [len(lv.values(TOP1)) for lv in levels if lv is not None])
    return Table(factor, rows, f, table_power, agreement)


def analyse(factors: list[Factor]) -> Analysis:
    """Every table's rows, model, power and agreement, and the report's SE-vs-no-SE contrasts."""
    contrasts = _contrasts(factors)
    return Analysis([_table(f, contrasts) for f in factors], list(contrasts.values()))
