"""The report as markdown: the setting, how to read it, the SE-vs-no-SE contrast, one section per table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ablations.config import IDENTITY_VERSION
from ablations.outcomes import CellState
from ablations.reporting import findings, fmt
from ablations.reporting.analysis import CONTRAST, Analysis, Comparison, Table
from ablations.reporting.design import BLOCK_P
from ablations.reporting.fmt import DASH, num
from ablations.reporting.paper_match import TOP1, TOP5, paper_value
from ablations.reporting.results import STATES, Cell, Factor, Level, studies
from ablations.reporting.stats import (
    ALPHA,
    BETTER,
    CONFIDENCE,
    EFFECTS,
    EXACT_UP_TO,
    MIN_RANKED,
    POWER,
    SAME,
    TIE,
    WORSE,
    ordering,
    printed,
)
from ablations.study.spec import StudySpec

SIGN = {SAME: "✓", "opposite": "✗", TIE: "tie", "": DASH}


def paragraph(text: str) -> str:
    """`text` as one markdown line (a wrapped line starting with `|` or `-` would read as a table or a list)."""
    return " ".join(text.split())


HOW_TO_READ = paragraph(
    f"""\
**How to read.** Errors are % on our data: *test* is the held-out test split after the last epoch, *final val* the
validation split after the last epoch (never the best epoch). `mean ± std [lo, hi]`: sample std over the finished
seeds and the {CONFIDENCE:.0%} Student-t interval of the mean. Δ is this level minus its reference in test top-1
error, estimated in one model per family: a table's comparisons with its reference form one family (the SE-vs-no-SE
contrast, †, is tested once per report in a family of its own, Bonferroni over the distinct contrasts). The model is
one-way (levels only) unless the seed, as a block, passes its F-test at p < {BLOCK_P:g}: then it is a
randomised-block model (level + seed), which removes what a seed shares across levels; a block that explains nothing
would only spend degrees of freedom. Δ's interval and *p (family)* are simultaneous over the family (Dunnett's
max-|t|, Student's t for a single comparison), so a verdict, **{BETTER}** or **{WORSE}**, is given exactly when the
interval as printed excludes 0 (and p < {ALPHA:.2f}); anything else is *inconclusive*, which is not evidence of no
effect: *rules out* gives the equivalence bound, the largest |Δ| the one-sided {CONFIDENCE:.0%} bounds (not
adjusted) leave open, and *p vs paper* tests the paper's Δ as a point hypothesis. Each table gives the smallest |Δ|
one comparison detects with {POWER:.0%} power at the family's critical value (MDE) and the seeds per level needed
for {" and ".join(f"{e:g}" for e in EFFECTS)} point, with the range the residual SD's {CONFIDENCE:.0%} chi-square
interval leaves open. A level needs two results to be tested, and there is no test when the model leaves no residual
spread (an accident of few seeds, not a measured one). Diverged runs are never dropped silently: each level gives
its divergence rate (diverged of the runs that produced a result, {CONFIDENCE:.0%} Wilson interval) and a mean that
counts each diverged run at the chance error 100·(1 − 1/K) %. The paper's numbers are ImageNet ResNet-50 errors (Hu
et al., Tables 10-16; CIFAR-10 for Table 4), another dataset and network: compare directions and orderings, not
values. *paper Δ* is the paper's error minus that of its reference row; *sign* says whether our Δ points the same
way (✓), the other way (✗), or one of them prints as 0 (tie). The ordering against the paper is Spearman's ρ over
the levels of the design (the no-SE row answers another question) on the printed means, equal ones tied, with an
exact one-sided permutation p-value from {MIN_RANKED} levels on (below that no ordering could reach p <
{ALPHA:.2f})."""
)  # one paragraph line


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned, the others right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return [line(header), "| " + " | ".join(align) + " |", *map(line, rows)]


def verdict(c: Comparison) -> str:
    return f"**{c.verdict}**" if c.verdict in (BETTER, WORSE) else c.verdict


def _seeds(level: Level) -> str:
    text = f"{level.count(CellState.FINISHED)}/{len(level.cells)}"
    extra = [f"{level.count(s)} {s}" for s in STATES[1:] if level.count(s)]
    return " · ".join([text, *extra])


def _paper_cell(level: Level) -> str:
    row = level.paper
    if row is None:
        return DASH
    note = f", {level.paper_note}" if level.paper_note else ""
    return f"{num(row.top1)} / {num(row.top5)} ({row.label}{note})"


def _reference_text(factor: Factor) -> str:
    ref, base = factor.reference(), factor.baseline()
    keys = factor.study.reference_keys()
    wanted = ", ".join(f"{k}={fmt.setting(factor.study.reference[k])}" for k in keys) if keys else "none"
    parts = [f"Reference: `{ref.label}` ({wanted})" if ref else f"Reference ({wanted}): not among the levels"]
    parts.append(f"no-SE baseline: `{base.label}`" if base else "no no-SE baseline in this table")
    return "; ".join(parts) + "."


def _power_text(t: Table) -> str:
    p = t.power
    if p.n == 0:
        return "**Power.** No family has two results per level yet: no estimate of what this table can detect."
    if p.sd == 0 or math.isnan(p.mde):
        return "**Power.** The family's model leaves no residual spread: no estimate."

    def seeds(e: float) -> str:
        lo, hi = p.seeds_range(e)
        return f"{e:g} point → {p.seeds_for(e) or '> 100 000'} seeds (SD interval: {lo or '?'}-{hi or '> 100 000'})"

    return (
        f"**Power.** Residual SD {num(p.sd)} points on {p.df} df ({CONFIDENCE:.0%} interval {num(p.sd_lo)}-"
        f"{num(p.sd_hi)}), {p.model} model. At n = {p.n} seeds per level and the family's critical |t| = "
        f"{num(p.crit, 3)}, one comparison detects |Δ| ≥ {num(p.mde)} points with {POWER:.0%} power (MDE); seeds per "
        f"level for {POWER:.0%} power at this level, with every level at that n: {'; '.join(map(seeds, EFFECTS))}."
    )


def _agreement_text(t: Table) -> list[str]:
    out = []
    for metric, name in ((TOP1, "top-1"), (TOP5, "top-5")):
        levels, agree = t.agreement[metric]
        if agree.n < 2:
            out.append(f"- {name}: {agree.statement} ({agree.n} design level(s) have our result and a published row).")
            continue
        labels = [lv.label for lv in levels]
        ours = ordering(labels, [printed(lv.summary(metric).mean) for lv in levels])
        theirs = ordering(labels, [paper_value(lv.paper, metric) or 0.0 for lv in levels])
        rho = "ρ undefined" if math.isnan(agree.rho) else f"Spearman ρ = {num(agree.rho, sign=True)}"
        if not math.isnan(agree.p):
            orderings = f"all {agree.n}! orderings" if agree.n <= EXACT_UP_TO else "100 000 random orderings"
            test = f"exact one-sided permutation p = {fmt.pvalue(agree.p)} ({orderings}): {agree.statement}"
        else:
            test = agree.statement
        out.append(f"- {name}: ours {ours}; paper {theirs}. {rho} over {agree.n} levels; {test}.")
    return out


COMPARISON_HEADER = ["Δ test top-1 vs reference [simultaneous 95%]", "p (family)", "verdict", "rules out |Δ| >"]


def _main_rows(t: Table) -> list[list[str]]:
    rows = []
    for r in t.rows:
        lv, c = r.level, r.comparison
        if lv.is_reference:
            cells = ["*reference*", "", "", ""]
        elif c is None:
            cells = [DASH, DASH, "no reference level" if lv.reference is None else DASH, DASH]
        else:
            mark = " †" if c.family == CONTRAST else ""
            bound = num(c.estimate.bound) if c.estimate else DASH
            cells = [findings.interval(c), fmt.pvalue(c.p_adjusted) + mark, verdict(c), bound]
        paper_delta = "*reference*" if lv.is_reference and lv.paper else num(r.paper_delta, sign=True)
        rows.append([lv.label, _seeds(lv), fmt.mean_sd_ci(r.top1), *cells, _paper_cell(lv), paper_delta,
                     fmt.pvalue(r.paper_p), SIGN[r.sign]])  # fmt: skip
    return rows


def _section(t: Table, figs: dict[str, str]) -> list[str]:
    factor = t.factor
    title = f"## {factor.study.name}: {factor.name}"
    if factor.tables:
        title += f" (paper {', '.join(factor.tables)})"
    lines = [title, "", _reference_text(factor), "", findings.family_text(t), "", *findings.table_sentences(t), ""]
    header = ["level", "seeds", "test top-1 err %", *COMPARISON_HEADER, "paper top-1 / top-5 % (ImageNet)",
              "paper Δ", "p vs paper", "sign"]  # fmt: skip
    lines += table(header, _main_rows(t))
    lines += ["", _power_text(t), ""]
    header = ["level", "diverged / runs [95% Wilson]", "test top-1 err %, diverged at chance", "test top-5 err %",
              "final val top-1 err %"]  # fmt: skip
    lines += table(header, [[r.level.label, fmt.rate(r.divergence), fmt.mean_sd_ci(r.at_chance),
                             fmt.mean_sd_ci(r.top5), fmt.mean_sd_ci(r.val1)] for r in t.rows])  # fmt: skip
    lines += ["", "**Ordering against the paper** (design levels, mean test error vs the published error):", ""]
    lines += _agreement_text(t)
    lines += [""]
    header = ["level", "params (M)", "GFLOPs", "images/s (train)", "train time/run (s)", "wall time/run (s)",
              "paper params (M)", "paper GFLOPs"]  # fmt: skip
    rows = []
    for lv in factor.levels:
        p = lv.paper
        rows.append([lv.label, num(lv.params_m(), 3), num(lv.gflops(), 4), num(lv.mean_metric("images_per_s"), 0),
                     num(lv.mean_metric("train_time_s"), 1), num(lv.wall_s(), 1),
                     num(p.params_m if p else None, 1), num(p.gflops if p else None, 2)])  # fmt: skip
    lines += table(header, rows)
    left_out = [(lv, c) for lv in factor.levels for c in lv.cells if c.state != CellState.FINISHED]
    if left_out:
        lines += ["", "Cells not in the means:", ""]
        lines += [f"- `{lv.label}` seed {c.trial.seed} (`{c.trial.key}`): {c.state}: {c.reason}" for lv, c in left_out]
    lines += [""]
    lines += [f"![{caption}]({name})" for name, caption in figs.items()]
    return [*lines, ""]


def _contrast_section(analysis: Analysis) -> list[str]:
    lines = ["## SE against no SE (†, tested once)", ""]
    if not analysis.contrasts:
        return [*lines, "No table holds a no-SE level beside its SE reference.", ""]
    rows = []
    for base, ref, c in analysis.contrasts:
        e, f = c.estimate, c.fit
        rows.append([f"`{base.label}` − `{ref.label}`", findings.interval(c), fmt.pvalue(e.p if e else math.nan),
                     fmt.pvalue(c.p_adjusted), verdict(c), num(e.bound) if e else DASH,
                     f"{f.model}, df = {f.df}" if f else DASH])  # fmt: skip
    header = ["contrast (no SE − SE)", "Δ test top-1 [95%, simultaneous]", "p", "p (family)", "verdict",
              "rules out |Δ| >", "model"]  # fmt: skip
    lines += table(header, rows)
    said = [findings.sentence(base.label, ref.label, c) for base, ref, c in analysis.contrasts]
    return [*lines, "", "A positive Δ: the network without SE has the higher error. " + " ".join(said), ""]


def _values(factors: list[Factor], pick: Callable[[Cell], Iterable[Any]]) -> str:
    """The distinct non-empty values `pick` finds in the cells, sorted and joined."""
    seen = sorted({str(v) for f in factors for lv in f.levels for c in lv.cells for v in pick(c) if v})
    return ", ".join(seen) or DASH


def _covered(spec: StudySpec) -> str:
    """Which variance the intervals cover, from the studies' data-seed setting."""
    linked = sorted({s.vary_data_seed for s in studies(spec)})
    words = {
        False: "seed variance only (initialisation, data order, augmentation): `data.data_seed` is fixed, so every "
        "run sees the same validation split, subsets and test images",
        True: "seed and data-split variance: `data.data_seed` follows the seed (`vary_data_seed`), so the "
        "validation split, the subsets and a drawn test subset change with it (a full test split never does)",
    }
    return "; ".join(words[v] for v in linked)


def _header(spec: StudySpec, factors: list[Factor]) -> list[str]:
    def tags(*names: str) -> Callable[[Cell], list[Any]]:
        return lambda c: [c.run.tag(n) for n in names] if c.run else []

    def version(c: Cell) -> list[str]:
        if not c.run:
            return []
        sha = str(c.run.tag("git_sha") or "unknown")[:12]
        return [sha + (" (dirty)" if c.run.tag("git_dirty") == "true" else "")]

    configs = [c.trial.config for f in factors for lv in f.levels for c in lv.cells]
    subsets = sorted({(c.data.train_subset, c.data.val_subset, c.data.test_subset) for c in configs}, key=str)
    recipes = sorted({s.recipe or "none (base settings only)" for s in studies(spec)})
    cells = list({c.trial.key: c for f in factors for lv in f.levels for c in lv.cells}.values())  # a trial once
    counts = {s: sum(c.state == s for c in cells) for s in STATES}
    rows = [
        ["dataset", ", ".join(sorted({c.data.dataset for c in configs}))
         + f" (subsets train/val/test: {', '.join(map(_subset, subsets))})"],
        ["backbone", ", ".join(sorted({c.model.name for c in configs}))],
        ["recipe", ", ".join(recipes)],
        ["epochs", ", ".join(map(str, sorted({c.train.epochs for c in configs})))],
        ["seeds", ", ".join(map(str, sorted({c.seed for c in configs})))],
        ["data seeds", ", ".join(map(str, sorted({c.data.data_seed for c in configs})))],
        ["intervals cover", _covered(spec)],
        ["device", _values(factors, tags("device", "gpu"))],
        ["torch", _values(factors, tags("torch"))],
        ["code version", _values(factors, version)],
        ["trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(cells)}"],
    ]  # fmt: skip
    return [*table(["setting", "value"], rows), *_earlier_note(cells)]


def _earlier_note(cells: list[Cell]) -> list[str]:
    """A line under the header when trials have results only under an earlier identity version: those results are
    in no table, and the report says so rather than leaving the trials silently pending."""
    earlier = [c for c in cells if c.earlier]
    if not earlier:
        return []
    return [
        "",
        paragraph(f"""**Earlier identity.** {len(earlier)} of the {len(cells)} trials have a result only under a
key made before trial identity version {IDENTITY_VERSION}; those results are in no table or mean below, which hold
results under the current keys only (the cells not in the means list each such trial with its earlier key), and
`sweep` trains these trials under version {IDENTITY_VERSION}."""),
    ]


def _subset(triple: tuple[int | None, int | None, int | None]) -> str:
    return "/".join("all" if n is None else str(n) for n in triple)


def render(spec: StudySpec, analysis: Analysis, figs: dict[str, dict[str, str]], overview: dict[str, str],
           excite: list[str]) -> str:  # fmt: skip
    """The report: header, legend, the overview figure, the SE-vs-no-SE contrast, one section per table, the role
    of excitation.

    Args:
        figs: study name → {file: caption} of its table's figures; overview: {file: caption} of the report's.
        excite: the role-of-excitation section's lines.
    """
    factors = [t.factor for t in analysis.tables]
    lines = [f"# SE ablation report: {spec.name}", "", spec.description.strip(), ""]
    lines += findings.summary(analysis)
    lines += _header(spec, factors)
    lines += ["", HOW_TO_READ, "",
              "Every number below, unrounded: [summary.csv](summary.csv) (per level), [tables.csv](tables.csv) "
              "(per table); LaTeX (booktabs): [tables.tex](tables.tex).", ""]  # fmt: skip
    lines += [f"![{caption}]({name})" for name, caption in overview.items()] + [""]
    lines += _contrast_section(analysis)
    for t in analysis.tables:
        lines += _section(t, figs.get(t.factor.study.name, {}))
    lines += excite
    return "\n".join(lines).rstrip() + "\n"
