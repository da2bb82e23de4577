"""What the data show and rule out, in sentences: one per comparison (estimate, simultaneous interval, one-sided
bounds, the per-seed signs, the paper's Δ as a point hypothesis), a table's family and model, the report's summary."""

from __future__ import annotations

import math

from ablations.reporting import fmt
from ablations.reporting.analysis import Analysis, Comparison, Table
from ablations.reporting.design import BLOCK_P, BLOCKED
from ablations.reporting.fmt import num
from ablations.reporting.stats import ALPHA, BETTER, CONFIDENCE, WORSE


def interval(c: Comparison) -> str:
    """`+Δ [lo, hi] (n = k)` from the family's model, simultaneous; the per-seed difference where there is no test."""
    e = c.estimate
    if e is None:
        return fmt.delta(c.pair.diff)
    return f"{num(e.estimate, sign=True)} [{num(e.lo, sign=True)}, {num(e.hi, sign=True)}] (n = {e.n})"


def _bounds(c: Comparison) -> str:
    e = c.estimate
    assert e is not None
    return (f"one-sided {CONFIDENCE:.0%} bounds Δ ≥ {num(e.lo1, sign=True)} and Δ ≤ {num(e.hi1, sign=True)}, so "
            f"|Δ| > {num(e.bound)} is ruled out")  # fmt: skip


def _every_seed(c: Comparison) -> str:
    diffs = c.pair.diffs
    if len(diffs) < 2 or not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        return ""
    word = "higher" if diffs[0] > 0 else "lower"
    lo, hi = sorted((min(diffs), max(diffs)), key=abs)
    return f"; its error is {word} on every seed ({num(lo, sign=True)} to {num(hi, sign=True)})"


def _paper(delta: float, p: float) -> str:
    if math.isnan(p):
        return ""
    word = "rejected" if p < ALPHA else "not ruled out"
    return f"; the paper's {num(delta, sign=True)} is {word} ({fmt.p_is(p)})"


def sentence(level: str, reference: str, c: Comparison, paper_delta: float = math.nan,
             paper_p: float = math.nan) -> str:  # fmt: skip
    """What one comparison shows, e.g. "`relu` is worse than `sigmoid`: Δ = +2.20 points [+0.41, +3.99]; ..."."""
    e = c.estimate
    if e is None:
        return f"`{level}` against `{reference}`: {c.verdict}."
    simultaneous = f"{num(e.estimate, sign=True)} points [{num(e.lo, sign=True)}, {num(e.hi, sign=True)}]"
    if c.verdict in (BETTER, WORSE):
        head = f"`{level}` is {c.verdict} than `{reference}`: Δ = {simultaneous}"
    else:
        head = f"`{level}` against `{reference}` is unresolved: Δ = {simultaneous}"
    return f"{head}; {_bounds(c)}{_every_seed(c)}{_paper(paper_delta, paper_p)}."


def table_sentences(t: Table) -> list[str]:
    """One sentence per comparison of the table's own family (the SE-vs-no-SE contrast is stated once, apart)."""
    out = []
    for r in t.rows:
        c = r.comparison
        if c is not None and c.family == "table" and r.level.reference is not None:
            out.append(sentence(r.level.label, r.level.reference.label, c, r.paper_delta, r.paper_p))
    return out


def family_text(t: Table) -> str:
    """The table's family: which comparisons, which model and why, the critical value, the within-seed r."""
    f, ref = t.fit, t.factor.reference()
    if f is None:
        return "**Family.** No comparison here has two results on each side: nothing is tested."
    own = [r for r in t.rows if r.comparison is not None and r.comparison.fit is f]
    what = f"the {len(own)} comparison{'s' if len(own) > 1 else ''} with `{ref.label if ref else '?'}`"
    if math.isnan(f.seed_p):
        block = "the seed block is not estimable here"
    else:
        used = "used" if f.model == BLOCKED else "left out"
        block = f"seed block F = {num(f.seed_f)}, {fmt.p_is(f.seed_p)}: {used} (rule: p < {BLOCK_P:g})"
    r = [f"`{row.level.label}` {num(row.comparison.correlation, sign=True)}" for row in own
         if row.comparison is not None and not math.isnan(row.comparison.correlation)]  # fmt: skip
    corr = f" Within-seed r with the reference: {', '.join(r)}." if r else ""
    if not f.testable:
        return f"**Family.** {what}, {f.model} model ({block}): no residual spread to test with.{corr}"
    kind = f"Dunnett's max-|t| over {f.groups - 1}" if f.groups > 2 else "Student's t, one comparison"
    split = f", Bonferroni over {f.split} families" if f.split > 1 else ""
    return (
        f"**Family.** {what[0].upper() + what[1:]}, in a {f.model} model ({block}); residual SD {num(f.sd)} on "
        f"{f.df} df. Critical |t| = {num(f.crit, 3)} ({kind}{split}): each interval is simultaneous at "
        f"{CONFIDENCE:.0%} and a verdict is given iff it excludes 0.{corr}"
    )


def summary(analysis: Analysis) -> list[str]:
    """The top of the report: what the data show and rule out, the SE-vs-no-SE contrast first."""
    lines = ["**What the data show** (test top-1 error, points; Δ = level − reference, simultaneous "
             f"{CONFIDENCE:.0%} within each family):", ""]  # fmt: skip
    for base, ref, c in analysis.contrasts:
        row = next((r for t in analysis.tables for r in t.rows if r.comparison is c), None)
        delta, p = (row.paper_delta, row.paper_p) if row else (math.nan, math.nan)
        lines.append(f"- SE against no SE: {sentence(base.label, ref.label, c, delta, p)}")
    for t in analysis.tables:
        said = table_sentences(t)
        if said:
            lines.append(f"- {t.factor.study.name}: " + " ".join(said))
    if len(lines) == 2:
        lines.append("- No comparison has two results on each side yet: nothing is estimated.")
    return [*lines, ""]
