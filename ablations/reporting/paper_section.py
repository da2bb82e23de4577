"""A table's comparison with the paper as markdown: how the setting differs, per level whether our result agrees
with the paper's direction where our test resolves one, and the ordering only where it can be tested."""

from __future__ import annotations

import math

from ablations.reporting import fmt
from ablations.reporting.analysis import Row, Table
from ablations.reporting.fmt import DASH, num
from ablations.reporting.md import table
from ablations.reporting.paper_match import TOP1, TOP5, paper_value
from ablations.reporting.results import Level
from ablations.reporting.setting import differences, table_classes, top5_comparable
from ablations.reporting.stats import BETTER, EXACT_UP_TO, MIN_RANKED, WORSE, ordering, printed

AGREES, DISAGREES, UNRESOLVED = "agrees", "disagrees", "unresolved"


def agreement(verdict: str, paper_delta: float) -> str:
    """Our direction against the paper's, only where our comparison resolves one.

    A verdict of better / worse (its interval excludes 0, and its adjusted test rejects) agrees when the paper's
    Δ points the same way and disagrees otherwise (also when the paper's Δ prints as 0); anything else is
    unresolved, whatever the point estimates say. "" without a paper Δ.
    """
    if math.isnan(paper_delta):
        return ""
    if verdict not in (BETTER, WORSE):
        return UNRESOLVED
    theirs = printed(paper_delta)
    return AGREES if theirs != 0 and (theirs < 0) == (verdict == BETTER) else DISAGREES


def paper_cell(level: Level, top5: bool) -> str:
    """The published errors of the level's row (top-5 only where it is compared), with the row's name."""
    row = level.paper
    if row is None:
        return DASH
    note = f", {level.paper_note}" if level.paper_note else ""
    errors = f"{num(row.top1)} / {num(row.top5)}" if top5 else num(row.top1)
    return f"{errors} ({row.label}{note})"


def _level_rows(t: Table, top5: bool) -> list[list[str]]:
    rows = []
    for r in t.rows:
        lv, c = r.level, r.comparison
        if lv.paper is None:
            continue
        if lv.is_reference:
            rows.append([lv.label, paper_cell(lv, top5), "*reference*", "", "*reference*", ""])
            continue
        ours = c.verdict if c is not None else DASH
        rows.append([lv.label, paper_cell(lv, top5), num(r.paper_delta, sign=True), fmt.pvalue(r.paper_p), ours,
                     agreement(ours, r.paper_delta) or DASH])  # fmt: skip
    return rows


def ordering_lines(t: Table, top5: bool) -> list[str]:
    """Our ordering of the design levels beside the paper's; Spearman's ρ and its p only where testable."""
    out = []
    for metric, name in ((TOP1, "top-1"), (TOP5, "top-5"))[: 2 if top5 else 1]:
        levels, agree = t.agreement[metric]
        if agree.n < 2:
            out.append(f"- {name}: {agree.statement} ({agree.n} design level(s) have our result and a published row).")
            continue
        labels = [lv.label for lv in levels]
        ours = ordering(labels, [printed(lv.summary(metric).mean) for lv in levels])
        theirs = ordering(labels, [paper_value(lv.paper, metric) or 0.0 for lv in levels])
        if agree.n < MIN_RANKED or math.isnan(agree.p):
            out.append(
                f"- {name}: ours {ours}; paper {theirs} ({agree.n} levels: no ordering test below {MIN_RANKED})."
            )
            continue
        orderings = f"all {agree.n}! orderings" if agree.n <= EXACT_UP_TO else "100 000 random orderings"
        out.append(f"- {name}: ours {ours}; paper {theirs}. Spearman ρ = {num(agree.rho, sign=True)} over {agree.n} "
                   f"levels, exact one-sided permutation {fmt.p_is(agree.p)} ({orderings}): "
                   f"{agree.statement}.")  # fmt: skip
    return out


def section(t: Table) -> list[str]:
    """The paper comparison of one table (nothing when it mirrors no paper table)."""
    factor = t.factor
    diffs = differences(factor)
    if not diffs:
        return []
    top5 = top5_comparable(table_classes(factor))
    lines = [f"**Against the paper** ({', '.join(factor.tables)}): a comparison of directions in another setting, "
             "not a replication check. What differs:", ""]  # fmt: skip
    lines += table(["aspect", "ours", "paper"], [[d.aspect, d.ours, d.paper + (" (same)" if d.same else "")]
                                                 for d in diffs])  # fmt: skip
    rows = _level_rows(t, top5)
    if rows:
        errors = "paper top-1 / top-5 %" if top5 else "paper top-1 %"
        lines += ["", *table(["level", errors, "paper Δ", "p vs paper", "our verdict", "agreement"], rows)]
    lines += ["", "Ordering of the design levels (mean test error against the published error):", ""]
    return [*lines, *ordering_lines(t, top5), ""]


def rows_csv(row: Row) -> dict[str, str]:
    """The level's agreement as `summary.csv` writes it."""
    ours = row.comparison.verdict if row.comparison is not None else ""
    return {"paper_agreement": agreement(ours, row.paper_delta)}


AGREEMENT_LEGEND = (
    f"*agreement* compares directions only where our comparison is resolved: **{AGREES}** or **{DISAGREES}** where "
    f"its verdict is better or worse (the interval excludes 0 and the adjusted test rejects), *{UNRESOLVED}* "
    "otherwise, however the point estimates point. The setting differences are listed above each level table, and "
    f"Spearman's ρ is printed only from {MIN_RANKED} levels, where an exact permutation test can reach p < 0.05."
)
