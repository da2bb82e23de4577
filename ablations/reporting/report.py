"""`senet-ablate report`: a study's runs, read back from MLflow, as paper-style tables with honest statistics.

One table per factor (per included study for a study like `paper`), one row per level: seeds finished, diverged
and failed; test and final-validation error as mean ± std with a 95% t-interval; the paired-by-seed difference to
the study's reference and to the no-SE baseline with a verdict; cost and speed; the paper's published row and
whether our ordering of the levels agrees with the paper's. The markdown, a CSV of the same numbers and the
figures go to `reports/<study>/` and to the study's parent run. Equal runs give byte-identical markdown.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.config import RunConfig, build_config, cost, unflatten
from ablations.errors import SenetError
from ablations.paper import PaperRow, paper_rows
from ablations.reporting import excitation, figures
from ablations.reporting.stats import Agreement, Paired, Summary, paired, rank_agreement, summarize
from ablations.spec import STANDARD_SE, StudySpec, Trial, closure
from ablations.sweep.runner import SweepOptions, study_status
from ablations.sweep.status import TrialStatus
from ablations.tracking import Tracker, TrialRun, open_store, tracking_uri
from senet_core import model_info

REPORTS = Path("reports")
TOP1, TOP5, VAL1 = "test_top1_err", "test_top5_err", "final_val_top1_err"
ABLATION_TABLES = tuple(f"Table {n}" for n in range(10, 17))  # the §6 ablations share one recipe and baseline
NO_SE = {"se.enabled": False}
DASH = "—"


# -- gathering ---------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One trial of a level: its state and, when it has one, its FINISHED MLflow run (a `runs_frame` row).

    `state` is finished or diverged (a FINISHED run; only finished ones enter the means), else failed, running
    or pending from the sweep ledger and the run records.
    """

    trial: Trial
    state: str
    run: TrialRun | None = None
    reason: str = ""

    def metric(self, name: str) -> float | None:
        value = self.run.metrics.get(name) if self.run is not None else None
        return None if value is None or math.isnan(value) else float(value)


@dataclass
class Level:
    """One row of a table: a configuration and its trials, one per seed."""

    label: str
    config: RunConfig
    cells: list[Cell]
    paper: PaperRow | None = None
    paper_note: str = ""  # where a borrowed paper row comes from, e.g. "Table 10"
    reference: Level | None = None  # the level this one is compared with (itself for the reference)
    baseline: Level | None = None  # its no-SE counterpart (itself for the baseline)
    curves: list[dict[int, float]] = field(default_factory=list)  # val top-1 error per epoch, per finished run

    def values(self, metric: str) -> dict[int, float]:
        """Seed → metric of the finished cells."""
        return {c.trial.seed: v for c in self.cells if c.state == "finished" and (v := c.metric(metric)) is not None}

    def summary(self, metric: str) -> Summary:
        return summarize([v for _, v in sorted(self.values(metric).items())])

    def versus(self, other: Level | None, metric: str) -> Paired | None:
        """Paired difference to `other`; None for itself, a missing level, or a side without a finished seed."""
        if other is None or other is self:
            return None
        mine, theirs = self.values(metric), other.values(metric)
        return paired(mine, theirs) if mine and theirs else None

    def count(self, state: str) -> int:
        return sum(c.state == state for c in self.cells)

    def mean_metric(self, name: str) -> float:
        values = [v for c in self.cells if c.state == "finished" and (v := c.metric(name)) is not None]
        return math.fsum(values) / len(values) if values else math.nan

    def wall_s(self) -> float:
        """Mean wall time of the finished runs (MLflow start to end), seconds."""
        spans = [
            (c.run.end_ms - c.run.start_ms) / 1000
            for c in self.cells
            if c.state == "finished" and c.run and c.run.end_ms
        ]
        return math.fsum(spans) / len(spans) if spans else math.nan

    def params_m(self) -> float:
        """Parameters in millions: as the runs recorded them, else counted from the configuration."""
        recorded = self.mean_metric("params")
        return (recorded if not math.isnan(recorded) else cost(self.config).params) / 1e6

    def gflops(self) -> float:
        recorded = self.mean_metric("gflops")
        return recorded if not math.isnan(recorded) else cost(self.config).gflops


@dataclass
class Factor:
    """One table: the levels of one study, with the paper tables it mirrors."""

    study: StudySpec
    levels: list[Level]
    tables: list[str]  # e.g. ["Table 12"]

    @property
    def name(self) -> str:
        return ", ".join(self.study.grid) or "configuration"

    def reference(self) -> Level | None:
        return next((lv for lv in self.levels if lv.reference is lv), None)

    def baseline(self) -> Level | None:
        return next((lv for lv in self.levels if lv.baseline is lv), None)

    def agreement(self, metric: str) -> tuple[list[Level], Agreement]:
        """Our mean against the paper's value, over the levels that have both."""
        both = [lv for lv in self.levels if lv.summary(metric).n > 0 and _paper_value(lv.paper, metric) is not None]
        ours = [lv.summary(metric).mean for lv in both]
        return both, rank_agreement(ours, [_paper_value(lv.paper, metric) or math.nan for lv in both])


def _paper_value(row: PaperRow | None, metric: str) -> float | None:
    if row is None:
        return None
    return {TOP1: row.top1, TOP5: row.top5}.get(metric)


def _table_names(study: StudySpec) -> list[str]:
    """`table12_excitation_operator` → "Table 12"."""
    return [f"Table {m.group(1)}" for key in study.mirrors if (m := re.match(r"table(\d+)_", key))]


def _same_stages(stages: Any, model: str) -> tuple[int, ...] | None:
    """Stages as a tuple, None for "every stage of the backbone" however it was spelled."""
    if stages is None:
        return None
    info = model_info(model.removeprefix("se_"))
    return None if tuple(sorted(stages)) == tuple(info.stages) else tuple(sorted(stages))


def paper_match(config: RunConfig, varied: set[str], rows: list[PaperRow]) -> PaperRow | None:
    """The published row describing the same SE design as `config` in the keys the study varies.

    The paper's no-SE rows (plain ResNet-50) match a configuration without SE; an SE row matches when every SE
    key the study varies equals the row's setting (the paper's standard SE for keys the row leaves alone). The
    backbone, dataset and FC bias are not compared: the paper's rows are ImageNet ResNet-50s.
    """
    se_keys = {k for k in varied if k != "se.enabled"}
    if "model.name" in varied:  # Table 4: backbones with and without SE, matched by name
        if se_keys - {"model.name"}:
            return None
        return next((r for r in rows if r.model.removeprefix("se_") == config.model.name
                     and r.model.startswith("se_") == config.se.enabled), None)  # fmt: skip
    if not se_keys <= set(STANDARD_SE):
        return None  # the study varies something the paper's ablation tables do not (a backbone, a recipe)
    flat = config.flat()
    for row in rows:
        if not row.model.startswith("se_"):
            if not config.se.enabled:
                return row
            continue
        if not config.se.enabled:
            continue
        settings = {**STANDARD_SE, **row.options}
        ours = {k: flat[k] for k in se_keys}
        theirs = {k: settings[k] for k in se_keys}
        if "se.stages" in se_keys:
            ours["se.stages"] = _same_stages(ours["se.stages"], config.model.name)
            theirs["se.stages"] = _same_stages(theirs["se.stages"], row.model)
        if ours == theirs:
            return row
    return None


def _borrowed_baseline() -> PaperRow | None:
    """The ablations' no-SE row (ResNet-50, 23.30 / 6.55), for tables that do not print it themselves."""
    return next((r for r in paper_rows() if r.table in ABLATION_TABLES and not r.model.startswith("se_")), None)


def _counterpart(config: RunConfig, settings: dict[str, Any]) -> str | None:
    """Config hash of `config` with `settings` applied (None when that is not a valid configuration)."""
    try:
        return build_config(unflatten({**config.flat(), **settings})).config_hash()
    except SenetError:
        return None


def _short(label: str, study: StudySpec) -> str:
    """A grid label without its key when the study has one factor: "se.reduction=8" → "8"."""
    if len(study.grid) == 1:
        return label.removeprefix(f"{next(iter(study.grid))}=")
    return label


def _cell(trial: Trial, finished: TrialRun | None, attempts: list[TrialRun], st: TrialStatus | None) -> Cell:
    if finished is not None:
        outcome = finished.outcome or "finished"
        reason = ""
        if outcome == "diverged":
            epoch = finished.metrics.get("diverged_epoch")
            reason = f"diverged at epoch {int(epoch)}" if epoch is not None and not math.isnan(epoch) else "diverged"
        return Cell(trial, outcome, finished, reason)
    ledger = st.state if st is not None else "pending"
    statuses = {a.status for a in attempts}
    if ledger == "failed" or (ledger != "running" and "FAILED" in statuses):
        reason = st.reason if st is not None and st.reason else "run FAILED (see its traceback.txt artifact)"
        return Cell(trial, "failed", None, reason)
    if ledger == "running" or "RUNNING" in statuses:
        return Cell(trial, "running", None, "still running")
    killed = sum(a.status == "KILLED" for a in attempts)
    return Cell(trial, "pending", None, f"killed {killed}× and not resumed yet" if killed else "no run yet")


def _curve(tracker: Tracker, attempts: list[TrialRun]) -> dict[int, float]:
    """Validation top-1 error per epoch of one trial: a resumed run logs only the epochs after its restart, so
    the attempts' histories are merged in start order, a later attempt's epoch replacing an earlier one's."""
    curve: dict[int, float] = {}
    for attempt in attempts:
        curve |= tracker.history(attempt.run_id, "val_top1_err")
    return curve


def _studies(spec: StudySpec) -> list[StudySpec]:
    """The studies with their own levels: the study itself, or each study it includes (e.g. `paper`)."""
    return [s for s in closure(spec) if s.points()]


def gather(spec: StudySpec, statuses: list[TrialStatus], runs: list[TrialRun], tracker: Tracker) -> list[Factor]:
    """The study's tables: its trials with their ledger states, filled with their runs (from MLflow)."""
    by_status = {s.trial.key: s for s in statuses}
    by_key: dict[str, list[TrialRun]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    rows = list(paper_rows())
    factors = []
    for study in _studies(spec):
        groups: dict[str, list[Trial]] = {}
        for s in statuses:
            t = s.trial
            if study.name in t.studies:
                label = t.labels[t.studies.index(study.name)]
                groups.setdefault(t.config_hash, []).append(replace(t, label=label))
        tables = _table_names(study)
        published = [r for r in rows if r.table in tables]
        if published and all(r.model.startswith("se_") for r in published) and (base := _borrowed_baseline()):
            published.append(base)
        levels: dict[str, Level] = {}
        for digest, group in groups.items():
            cells = []
            for t in sorted(group, key=lambda t: t.seed):
                attempts = by_key.get(t.key, [])
                finished = next((a for a in attempts if a.status == "FINISHED"), None)
                cells.append(_cell(t, finished, attempts, by_status.get(t.key)))
            config = group[0].config
            level = Level(_short(group[0].label, study), config, cells)
            level.paper = paper_match(config, study.varied_keys(), published)
            if level.paper is not None and level.paper.table not in tables:
                level.paper_note = level.paper.table
            level.curves = [_curve(tracker, by_key[c.trial.key]) for c in cells if c.state == "finished"]
            levels[digest] = level
        # A level's reference is itself with the study's reference settings applied, its baseline itself without
        # SE: both keep every other factor, so in a crossed grid each level is compared within its own row.
        ref_settings = {k: study.reference[k] for k in study.reference_keys()}
        for level in levels.values():
            if ref_settings:
                level.reference = levels.get(_counterpart(level.config, ref_settings) or "")
            level.baseline = levels.get(_counterpart(level.config, NO_SE) or "")
        factors.append(Factor(study, list(levels.values()), tables))
    return factors


# -- formatting --------------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 2, sign: bool = False) -> str:
    """Fixed decimals (a dash for none); a value that rounds to zero is printed without a sign."""
    if x is None or math.isnan(x):
        return DASH
    text = format(x, f"{'+' if sign else ''}.{digits}f")
    return text.lstrip("+-") if float(text) == 0 else text


def _pm(s: Summary) -> str:
    """`mean ± std [lo, hi]`, the mean alone for one seed, a dash for none."""
    if s.n == 0:
        return DASH
    if s.n == 1:
        return f"{_num(s.mean)} (n = 1)"
    return f"{_num(s.mean)} ± {_num(s.std)} [{_num(s.lo)}, {_num(s.hi)}]"


def _delta(p: Paired | None, role: str) -> str:
    if p is None:
        return f"*{role}*" if role else DASH
    if p.diff.n == 0:
        return "no common seeds"
    if p.diff.n == 1:
        return f"{_num(p.diff.mean, sign=True)} (n = 1): n < 2"
    lo, hi = _num(p.diff.lo, sign=True), _num(p.diff.hi, sign=True)
    return f"{_num(p.diff.mean, sign=True)} [{lo}, {hi}] {p.verdict} (n = {p.diff.n})"


def _seeds(level: Level) -> str:
    text = f"{level.count('finished')}/{len(level.cells)}"
    extra = [f"{level.count(s)} {s}" for s in ("diverged", "failed", "running", "pending") if level.count(s)]
    return " · ".join([text, *extra])


def _paper_cell(level: Level) -> str:
    row = level.paper
    if row is None:
        return DASH
    note = f", {level.paper_note}" if level.paper_note else ""
    return f"{_num(row.top1)} / {_num(row.top5)} ({row.label}{note})"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return [line(header), "| " + " | ".join(align) + " |", *map(line, rows)]


def _order(levels: list[Level], values: list[float]) -> str:
    pairs = sorted(zip(values, [lv.label for lv in levels], strict=True))
    return " < ".join(label for _, label in pairs)


def _agreement_text(factor: Factor) -> list[str]:
    out = []
    for metric, name in ((TOP1, "top-1"), (TOP5, "top-5")):
        levels, agree = factor.agreement(metric)
        if agree.n < 2:
            out.append(f"- {name}: {agree.statement} ({agree.n} level(s) have both our result and a published row).")
            continue
        ours = _order(levels, [lv.summary(metric).mean for lv in levels])
        theirs = _order(levels, [_paper_value(lv.paper, metric) or math.nan for lv in levels])
        rho = "ρ undefined" if math.isnan(agree.rho) else f"Spearman ρ = {_num(agree.rho, sign=True)}"
        out.append(f"- {name}: ours {ours}; paper {theirs}. {rho} over {agree.n} levels: **{agree.statement}**.")
    return out


def _show(value: Any) -> str:
    """A setting as a spec writes it: strings bare, everything else as JSON (true, null, [2, 3])."""
    return value if isinstance(value, str) else json.dumps(value)


def _reference_text(factor: Factor) -> str:
    ref, base = factor.reference(), factor.baseline()
    keys = factor.study.reference_keys()
    wanted = ", ".join(f"{k}={_show(factor.study.reference[k])}" for k in keys) if keys else "none"
    parts = [f"Reference: `{ref.label}` ({wanted})" if ref else f"Reference ({wanted}): not among the levels"]
    parts.append(f"no-SE baseline: `{base.label}`" if base else "no no-SE baseline in this table")
    return "; ".join(parts) + "."


def _factor_section(factor: Factor, figs: dict[str, str]) -> list[str]:
    title = f"## {factor.study.name}: {factor.name}"
    if factor.tables:
        title += f" (paper {', '.join(factor.tables)})"
    lines = [title, "", _reference_text(factor), ""]
    header = ["level", "seeds", "test top-1 err %", "test top-5 err %", "final val top-1 err %",
              "Δ test top-1 vs reference", "Δ test top-1 vs no SE", "paper top-1 / top-5 % (ImageNet)"]  # fmt: skip
    rows = []
    for lv in factor.levels:
        rows.append([
            lv.label, _seeds(lv), _pm(lv.summary(TOP1)), _pm(lv.summary(TOP5)), _pm(lv.summary(VAL1)),
            _delta(lv.versus(lv.reference, TOP1), "reference" if lv.reference is lv else ""),
            _delta(lv.versus(lv.baseline, TOP1), "baseline" if lv.baseline is lv else ""),
            _paper_cell(lv),
        ])  # fmt: skip
    lines += _md_table(header, rows)
    lines += ["", "**Ordering against the paper** (mean test error vs the published ImageNet error):", ""]
    lines += _agreement_text(factor)
    lines += [""]
    header = ["level", "params (M)", "GFLOPs", "images/s (train)", "train time/run (s)", "wall time/run (s)",
              "paper params (M)", "paper GFLOPs"]  # fmt: skip
    rows = []
    for lv in factor.levels:
        p = lv.paper
        rows.append([
            lv.label, _num(lv.params_m(), 3), _num(lv.gflops(), 4), _num(lv.mean_metric("images_per_s"), 0),
            _num(lv.mean_metric("train_time_s"), 1), _num(lv.wall_s(), 1),
            _num(p.params_m if p else None, 1), _num(p.gflops if p else None, 2),
        ])  # fmt: skip
    lines += _md_table(header, rows)
    left_out = [(lv, c) for lv in factor.levels for c in lv.cells if c.state != "finished"]
    if left_out:
        lines += ["", "Cells not in the means:", ""]
        lines += [f"- `{lv.label}` seed {c.trial.seed} (`{c.trial.key}`): {c.state}: {c.reason}" for lv, c in left_out]
    lines += [""]
    lines += [f"![{caption}]({name})" for name, caption in figs.items()]
    return [*lines, ""]


def _values(factors: list[Factor], pick: Callable[[Cell], list[Any]]) -> str:
    """The distinct non-empty values `pick` finds in the cells, sorted and joined."""
    seen = sorted({str(v) for f in factors for lv in f.levels for c in lv.cells for v in pick(c) if v})
    return ", ".join(seen) or DASH


def _header(spec: StudySpec, factors: list[Factor]) -> list[str]:
    def tags(*names: str) -> Callable[[Cell], list[Any]]:
        return lambda c: [c.run.tag(n) for n in names] if c.run else []

    def version(c: Cell) -> list[str]:
        if not c.run:
            return []
        sha = str(c.run.tag("git_sha") or "unknown")[:12]
        return [sha + (" (dirty)" if c.run.tag("git_dirty") == "true" else "")]

    configs = [c.trial.config for f in factors for lv in f.levels for c in lv.cells]
    datasets = sorted({c.data.dataset for c in configs})
    subsets = sorted({(c.data.train_subset, c.data.val_subset, c.data.test_subset) for c in configs}, key=str)
    recipes = sorted({s.recipe or "none (base settings only)" for s in _studies(spec)})
    cells = list({c.trial.key: c for f in factors for lv in f.levels for c in lv.cells}.values())  # a trial once
    counts = {s: sum(c.state == s for c in cells) for s in ("finished", "diverged", "failed", "running", "pending")}
    rows = [
        ["dataset", ", ".join(datasets) + f" (subsets train/val/test: {', '.join(map(_subset, subsets))})"],
        ["backbone", ", ".join(sorted({c.model.name for c in configs}))],
        ["recipe", ", ".join(recipes)],
        ["epochs", ", ".join(map(str, sorted({c.train.epochs for c in configs})))],
        ["seeds", ", ".join(map(str, sorted({c.seed for c in configs})))],
        ["device", _values(factors, tags("device", "gpu"))],
        ["torch", _values(factors, tags("torch"))],
        ["code version", _values(factors, version)],
        ["trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(cells)}"],
    ]
    return _md_table(["setting", "value"], rows)


def _subset(triple: tuple[int | None, int | None, int | None]) -> str:
    return "/".join("all" if n is None else str(n) for n in triple)


HOW_TO_READ = """\
Errors are % on our data: *test* is the held-out test split after the last epoch, *final val* the validation
split after the last epoch (never the best epoch). `mean ± std [lo, hi]`: sample std over seeds and the 95%
Student-t interval of the mean. Δ is paired by seed (this level minus the other, over the seeds both finished):
**better** / **worse** when its 95% interval lies entirely below / above 0, else **within noise**; `n < 2` when
fewer than two seeds pair up. Diverged, failed and missing cells are counted in *seeds* and never averaged.
The paper's numbers are ImageNet ResNet-50 errors (Hu et al., Tables 10-16), a different dataset and network:
compare the ordering of the levels, not the values."""


def render(spec: StudySpec, factors: list[Factor], figs: dict[str, dict[str, str]], excite: list[str]) -> str:
    """The report as markdown: header, one section per factor, the role of excitation."""
    lines = [f"# SE ablation report: {spec.name}", "", spec.description.strip(), ""]
    lines += _header(spec, factors)
    lines += ["", HOW_TO_READ, "", "Every number below, unrounded: [summary.csv](summary.csv).", ""]
    for factor in factors:
        lines += _factor_section(factor, figs.get(factor.study.name, {}))
    lines += excite
    return "\n".join(lines).rstrip() + "\n"


def frame(factors: list[Factor]) -> pd.DataFrame:
    """The aggregated tables as one frame (one row per study and level), for the CSV."""
    rows = []
    for f in factors:
        for lv in f.levels:
            row: dict[str, Any] = {"study": f.study.name, "factor": f.name, "level": lv.label,
                                   "config_hash": lv.config.config_hash(), "reference": lv.reference is lv,
                                   "baseline": lv.baseline is lv, "seeds": len(lv.cells)}  # fmt: skip
            row |= {s: lv.count(s) for s in ("finished", "diverged", "failed", "running", "pending")}
            for metric in (TOP1, TOP5, VAL1):
                s = lv.summary(metric)
                row |= {f"{metric}_mean": s.mean, f"{metric}_std": s.std, f"{metric}_ci_lo": s.lo,
                        f"{metric}_ci_hi": s.hi}  # fmt: skip
            for metric in (TOP1, TOP5):
                for other, tag in ((lv.reference, "ref"), (lv.baseline, "noSE")):
                    pair = lv.versus(other, metric)
                    d = pair.diff if pair else summarize([])
                    row |= {f"d_{tag}_{metric}_n": d.n, f"d_{tag}_{metric}_mean": d.mean,
                            f"d_{tag}_{metric}_ci_lo": d.lo, f"d_{tag}_{metric}_ci_hi": d.hi,
                            f"d_{tag}_{metric}_verdict": pair.verdict if pair else ""}  # fmt: skip
            row |= {"params_m": lv.params_m(), "gflops": lv.gflops(), "images_per_s": lv.mean_metric("images_per_s"),
                    "train_time_s": lv.mean_metric("train_time_s"), "wall_time_s": lv.wall_s()}  # fmt: skip
            p = lv.paper
            row |= {"paper_table": p.table if p else "", "paper_row": p.label if p else "",
                    "paper_top1_err": p.top1 if p else None, "paper_top5_err": p.top5 if p else None,
                    "paper_params_m": p.params_m if p else None, "paper_gflops": p.gflops if p else None}  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


# -- figures, excitation, files ----------------------------------------------------------------------------------


def draw(factor: Factor, out: Path) -> dict[str, str]:
    """The factor's four figures under `out`; file name → caption."""
    name, levels = factor.study.name, factor.levels
    labels = [lv.label for lv in levels]
    top1 = [lv.summary(TOP1) for lv in levels]
    err = "test top-1 error %"
    made = [
        (
            f"{name}_error.png",
            "test top-1 error by level, 95% CI, paper value beside",
            figures.error_by_level(labels, top1, [lv.paper.top1 if lv.paper else None for lv in levels], ylabel=err,
                                   title=f"{name}: {factor.name}"),
        ),
        (
            f"{name}_tradeoff.png",
            "test top-1 error against params and training time",
            figures.tradeoff(labels, top1, [lv.params_m() for lv in levels],
                             [lv.mean_metric("train_time_s") for lv in levels], ylabel=err,
                             title=f"{name}: error against cost"),
        ),
        (
            f"{name}_curves.png",
            "validation top-1 error per epoch, mean ± std over seeds",
            figures.curves(labels, [lv.curves for lv in levels], ylabel="validation top-1 error %",
                           title=f"{name}: validation error per epoch (mean ± std over seeds)"),
        ),
        (
            f"{name}_seeds.png",
            "test top-1 error of every finished seed",
            figures.seed_dots(labels, [lv.values(TOP1) for lv in levels], ylabel=err, title=f"{name}: every seed"),
        ),
    ]  # fmt: skip
    for file, _, fig in made:
        figures.save(fig, out / file)
    return {file: caption for file, caption, _ in made}


def _excitation_section(spec: StudySpec, trials: list[Trial], results: Path, out: Path) -> tuple[list[str], list[Path]]:
    """Figs. 6-7 for the study's reference model (first seed), or a line saying why they are missing."""
    lines = ["## Role of excitation (paper §7.2, Figs. 6-7)", ""]
    try:
        target = excitation.study_target(spec, trials, results)
    except SenetError as err:
        return [*lines, f"Not drawn: {err}.", ""], []
    if not target.checkpoint.is_file():
        return [*lines, f"Not drawn: no checkpoint for the reference model `{target.key}` under `runs/`.", ""], []
    try:  # the dataset may be missing on this machine, or the reference model may have no SE block
        model, loader, num_classes = excitation.load_model(target)
        ex = excitation.analyze(model, loader, excitation.pick_classes(None, num_classes))
    except SenetError as err:
        return [*lines, f"Not drawn: {err}.", ""], []
    paths = excitation.write(ex, out, target.label)
    trend = ex.depth_trend()
    lines += [
        f"Reference model `{target.label}` (`{target.key}`), up to {excitation.PER_CLASS} validation images per "
        f"class ({', '.join(f'class {k}: {n}' for k, n in zip(ex.classes, ex.images, strict=True))}). The paper "
        "finds early blocks class-agnostic (SE_2_3), later ones class-specific (SE_4_6, SE_5_1) and the last ones "
        "saturated near 1 (SE_5_2).",
        "",
    ]
    lines += _md_table(["SE block", "class share of excitation variance"],
                       [[b, _num(s, 3)] for b, s in ex.specificity.items()])  # fmt: skip
    rho = "undefined" if math.isnan(trend) else _num(trend, sign=True)
    lines += ["", f"Specificity against depth: Spearman ρ = {rho}.", ""]
    lines += ["![mean excitation per class](excitation_profiles.png)",
              "![excitation mean ± std per class](excitation_spread.png)",
              "![class-specificity by depth](excitation_specificity.png)", ""]  # fmt: skip
    return lines, paths


def write_report(study: str, opts: SweepOptions, out: Path | None = None) -> Path:
    """`senet-ablate report STUDY`: write `README.md`, the CSV and the figures, and log them to the parent run.

    Args:
        study: a shipped study name or a path to a YAML spec.
        opts: the sweep's results folder, stores and `--set` overrides (they change its trials), and `device`
            (what `auto` resolved to; default: as the ledger recorded it).
        out: the report folder; default `reports/<study>/`.

    Returns:
        The path of the README.

    Raises:
        SenetError: an unknown study, an unreachable tracking store, or no runs of the study in it.
    """
    spec, trials, statuses = study_status(study, opts)
    uri = tracking_uri(opts.tracking_uri, opts.results)
    tracker = open_store(uri, opts.results)
    runs = tracker.trial_runs({t.key for t in trials})
    if not runs and not any(s.known for s in statuses):  # a sweep that has only queued its trials still renders
        raise SenetError(f"report: no runs of study {spec.name!r} in {uri}; run `senet-ablate sweep {study}` first")
    factors = gather(spec, statuses, runs, tracker)
    out = out if out is not None else REPORTS / spec.name
    out.mkdir(parents=True, exist_ok=True)
    figs = {f.study.name: draw(f, out) for f in factors}
    excite, excite_paths = _excitation_section(spec, trials, opts.results, out)
    readme = out / "README.md"
    readme.write_text(render(spec, factors, figs, excite))
    csv = out / "summary.csv"
    frame(factors).to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    parent = tracker.find_parent(spec.name)
    if parent is not None:
        files = [readme, csv, *(out / name for f in figs.values() for name in f), *excite_paths]
        tracker.log_files(parent, files, "report")
    return readme
