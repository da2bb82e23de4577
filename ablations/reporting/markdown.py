"""The report as markdown: the setting, the SE-vs-no-SE contrast, one section per table, and how to read it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ablations.config import IDENTITY_VERSION
from ablations.outcomes import CellState
from ablations.reporting import findings, fmt, paper_section, seeds_table, timing
from ablations.reporting.analysis import CONTRAST, Analysis, Comparison, Table
from ablations.reporting.design import BLOCK_P
from ablations.reporting.fmt import DASH, num
from ablations.reporting.md import paragraph, table
from ablations.reporting.paper_section import AGREEMENT_LEGEND
from ablations.reporting.results import STATES, Cell, Factor, Level, studies
from ablations.reporting.seeds_table import NLL
from ablations.reporting.setting import table_classes, top5_comparable
from ablations.reporting.stats import ALPHA, BETTER, CONFIDENCE, EFFECTS, POWER, WORSE
from ablations.study.spec import StudySpec

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
counts each diverged run at the chance error 100·(1 − 1/K) %. Errors
are test top-1 unless named; *test NLL* is the test split's mean cross-entropy (nats), a steadier measure than the
error at few seeds. A level of two seeds prints its two values, not a t-interval over one degree of freedom, and
equal values print as such, never as a zero-width interval. The paper's numbers come from another dataset, network
and recipe (each table lists how its setting differs): compare directions, not values. *paper Δ* is the paper's
error minus that of its reference row; {AGREEMENT_LEGEND} Top-5 error is shown only with more than 10 classes."""
)  # one paragraph line


def verdict(c: Comparison) -> str:
    return f"**{c.verdict}**" if c.verdict in (BETTER, WORSE) else c.verdict


def _seeds(level: Level) -> str:
    text = f"{level.count(CellState.FINISHED)}/{len(level.cells)}"
    extra = [f"{level.count(s)} {s}" for s in STATES[1:] if level.count(s)]
    return " · ".join([text, *extra])


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
        rows.append([lv.label, _seeds(lv), fmt.mean_sd_ci(r.top1), *cells])
    return rows


def _section(t: Table, figs: dict[str, str]) -> list[str]:
    factor = t.factor
    title = f"## {factor.study.name}: {factor.name}"
    if factor.tables:
        title += f" (paper {', '.join(factor.tables)})"
    lines = [title, "", _reference_text(factor), "", findings.family_text(t), "", *findings.table_sentences(t), ""]
    header = ["level", "seeds", "test top-1 err %", *COMPARISON_HEADER]
    lines += table(header, _main_rows(t))
    lines += ["", _power_text(t), ""]
    top5 = top5_comparable(table_classes(factor))
    header = ["level", "diverged / runs [95% Wilson]", "test top-1 err %, diverged at chance", "test NLL (nats)",
              *(["test top-5 err %"] if top5 else []), "final val top-1 err %"]  # fmt: skip
    lines += table(header, [[r.level.label, fmt.rate(r.divergence), fmt.mean_sd_ci(r.at_chance),
                             fmt.mean_sd_ci(r.level.summary(NLL), 3), *([fmt.mean_sd_ci(r.top5)] if top5 else []),
                             fmt.mean_sd_ci(r.val1)] for r in t.rows])  # fmt: skip
    lines += ["", *paper_section.section(t), *seeds_table.section(t)]
    header = ["level", "params (M)", "GFLOPs", "images/s (train)", "train ms/image", "train time/run (s)",
              "wall time/run (s)", "paper params (M)", "paper GFLOPs"]  # fmt: skip
    rows = []
    for lv in factor.levels:
        p = lv.paper
        rows.append([lv.label, num(lv.params_m(), 3), num(lv.gflops(), 4), num(lv.mean_metric("images_per_s"), 0),
                     num(timing.ms_per_image(lv), 2), num(lv.mean_metric("train_time_s"), 1), num(lv.wall_s(), 1),
                     num(p.params_m if p else None, 1), num(p.gflops if p else None, 2)])  # fmt: skip
    lines += table(header, rows)
    lines += ["", f"Training times: {timing.load_note(factor.levels)}."]
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
        ["classes", ", ".join(sorted({str(lv.classes()) for f in factors for lv in f.levels}))],
        ["backbone", ", ".join(sorted({c.model.name for c in configs}))],
        ["recipe", ", ".join(recipes)],
        ["epochs", ", ".join(map(str, sorted({c.train.epochs for c in configs})))],
        ["seeds", ", ".join(map(str, sorted({c.seed for c in configs})))],
        ["data seeds", ", ".join(map(str, sorted({c.data.data_seed for c in configs})))],
        ["intervals cover", _covered(spec)],
        ["device", _values(factors, tags("device", "gpu"))],
        ["training times", timing.load_note([lv for f in factors for lv in f.levels])],
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
    """The report: header, the overview figure, the SE-vs-no-SE contrast, one section per table, the role of
    excitation, and the legend last (collapsed), so the findings come before the rules.

    Args:
        figs: study name → {file: caption} of its table's figures; overview: {file: caption} of the report's.
        excite: the role-of-excitation section's lines.
    """
    factors = [t.factor for t in analysis.tables]
    lines = [f"# SE ablation report: {spec.name}", "", spec.description.strip(), ""]
    lines += findings.summary(analysis)
    lines += _header(spec, factors)
    lines += ["", "Every number below, unrounded: [summary.csv](summary.csv) (per level), [tables.csv](tables.csv) "
              "(per table), [seeds.csv](seeds.csv) (per seed); LaTeX (booktabs): [tables.tex](tables.tex). How to "
              "read the tables: at the end.", ""]  # fmt: skip
    lines += [f"![{caption}]({name})" for name, caption in overview.items()] + [""]
    lines += _contrast_section(analysis)
    for t in analysis.tables:
        lines += _section(t, figs.get(t.factor.study.name, {}))
    lines += excite
    lines += ["## How to read", "", "<details><summary>The rules behind every table (click to open)</summary>", "",
              HOW_TO_READ, "", "</details>", ""]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"
