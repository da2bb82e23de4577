"""`senet-ablate report`: a study's runs, read back from MLflow, as paper-style tables with honest statistics.

This module only orchestrates: `results` gathers the tables from the trials `study_status` gives and their runs,
`analysis` computes every number once (`stats`), and `markdown`, `latex`, `frames` and `figures` render them.
The files go to `reports/<study>/` and to the study's parent run: README.md, report.html (the same with its
figures embedded, for MLflow's viewer), summary.csv (per level), tables.csv (per table) and seeds.csv (per seed),
every float at full precision, tables.tex, the overview forest plot, three figures per table and the role of
excitation. Equal runs give byte-identical markdown, HTML, CSV, LaTeX and figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ablations.errors import SenetError
from ablations.outcomes import CellState
from ablations.reporting import excitation, figures, timing
from ablations.reporting.analysis import Analysis, Table, analyse
from ablations.reporting.frames import forest_frame, levels_frame, tables_frame
from ablations.reporting.latex import latex
from ablations.reporting.markdown import render
from ablations.reporting.paper_match import TOP1
from ablations.reporting.report_html import to_html
from ablations.reporting.results import gather
from ablations.reporting.seeds_table import seeds_frame
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.status import ReadOptions, study_status
from ablations.tracking import Tracker, open_store, tracking_uri

REPORTS = Path("reports")
FOREST = "overview_forest.png"
ERR = "test top-1 error %"


def _cut(n: int) -> str:
    return f"; {n} interval(s) reach past 0-100 % and are cut (▲/▼)" if n else ""


def exact(x: float) -> str:
    """A float as the shortest text that reads back as the same float (CSV cells round-trip exactly)."""
    return repr(float(x))


def draw(table: Table, out: Path, load: str) -> dict[str, str]:
    """The table's three figures under `out`; file name → caption.

    Args:
        load: how the runs' training times were measured (`timing.load_note`), for the cost figure's caption.
    """
    f = table.factor
    name, levels = f.study.name, f.levels
    labels = [lv.label for lv in levels]
    top1 = [r.top1 for r in table.rows]
    cut = _cut(figures.truncated(top1))
    chance = 100.0 * (1 - 1 / levels[0].classes()) if levels else 100.0
    costs = {"GFLOPs (multiply-adds)": [lv.gflops() for lv in levels], "params (M)": [lv.params_m() for lv in levels],
             "training ms per image (measured)": [timing.ms_per_image(lv) for lv in levels]}  # fmt: skip
    front = any(figures.frontier(v, top1) for v in costs.values())
    made = [
        (f"{name}_cost.png", f"test top-1 error (mean; 95% CI from 3 seeds, the two values at 2) against GFLOPs, "
         f"params and measured training time per image ({load}); each cost as % of the cheapest level; levels of equal "
         f"cost spread apart; " + ("Pareto frontier on intervals dashed" if front else
                                   "no Pareto frontier: no level's interval lies below a cheaper one's") + cut,
         figures.cost(labels, top1, costs, ylabel=ERR, title=f"{name}: error against cost")),
        (f"{name}_curves.png", "validation top-1 error per epoch, mean with a 95% t-band over seeds (between the two "
         "values at 2)",
         figures.curves(labels, [lv.curves for lv in levels], ylabel="validation top-1 error %",
                        title=f"{name}: validation error per epoch (mean, 95% t-band over seeds)")),
        (f"{name}_seeds.png", f"test top-1 error of every seed, joined by seed; mean and 95% CI beside (the two "
         f"values at 2){cut}",
         figures.seeds(labels, [lv.values(TOP1) for lv in levels],
                       [[c.trial.seed for c in lv.cells if c.state == CellState.DIVERGED] for lv in levels], chance,
                       ylabel=ERR, title=f"{name}: every seed (lines join a seed's runs)")),
    ]  # fmt: skip
    for file, _, fig in made:
        figures.save(fig, out / file)
    return {file: caption for file, caption, _ in made}


def overview(spec: StudySpec, analysis: Analysis, out: Path) -> dict[str, str]:
    """The forest plot of every table's paired Δ beside the paper's; file name → caption."""
    rows = forest_frame(analysis)
    figures.save(figures.forest(rows, title=f"{spec.name}: Δ to the reference, ours and the paper's"),
                 out / FOREST)  # fmt: skip
    caption = ("overview: every level's Δ test top-1 error to its reference in its family's model, with its "
               "simultaneous 95% interval (left, coloured by verdict), and the paper's Δ on its own scale "
               "(right)")  # fmt: skip
    return {FOREST: caption}


def analysed(spec: StudySpec, opts: ReadOptions, command: str, named: str) -> tuple[list[Trial], Analysis, Tracker]:
    """The study's trials, the analysis `report` renders, and the tracking store it read the runs from.

    Raises:
        SenetError: an unreachable tracking store, or no runs of the study in it (`command` and the study as
            `named` in the hint).
    """
    trials, statuses = study_status(spec, opts)
    uri = tracking_uri(opts.tracking_uri, opts.results)
    tracker = open_store(uri, opts.results)
    runs = tracker.trial_runs({t.key for t in trials})
    if not runs and not any(s.known or s.earlier for s in statuses):  # queued, or made under an earlier key: renders
        raise SenetError(f"{command}: no runs of study {spec.name!r} in {uri}; run `senet-ablate sweep {named}` first")
    return trials, analyse(gather(spec, statuses, runs, tracker)), tracker


def write_report(spec: StudySpec, opts: ReadOptions, out: Path | None = None, named: str | None = None) -> Path:
    """`senet-ablate report STUDY`: write the report's files and log them to the study's parent run.

    Args:
        spec: the study, loaded (its includes with it).
        opts: the sweep's results folder, stores and `--set` overrides (they change its trials), and `device`
            (what `auto` resolved to; default: as the ledger recorded it).
        out: the report folder; default `reports/<study>/`.
        named: the study as the command line named it (a name or a path), for the hint; default its name.

    Returns:
        The path of the README.

    Raises:
        SenetError: an unreachable tracking store, or no runs of the study in it.
    """
    trials, analysis, tracker = analysed(spec, opts, "report", named or spec.name)
    out = out if out is not None else REPORTS / spec.name
    out.mkdir(parents=True, exist_ok=True)
    load = timing.load_note([lv for t in analysis.tables for lv in t.factor.levels])
    figs = {t.factor.study.name: draw(t, out, load) for t in analysis.tables}
    top = overview(spec, analysis, out)
    excite, excite_paths = excitation.report_section(spec, trials, opts.results, out)
    readme = out / "README.md"
    text = render(spec, analysis, figs, top, excite)
    readme.write_text(text)
    page = out / "report.html"  # MLflow's artifact viewer shows markdown as raw text: this, whole, with its figures
    page.write_text(to_html(text, out, f"{spec.name}: senet-ablate report"))
    csvs = [out / "summary.csv", out / "tables.csv", out / "seeds.csv"]
    frames = (levels_frame(analysis), tables_frame(analysis), seeds_frame(analysis))
    for frame, path in zip(frames, csvs, strict=True):
        frame.to_csv(path, index=False, float_format=exact, lineterminator="\n")
    tex = out / "tables.tex"
    tex.write_text(latex(analysis))
    parent = tracker.find_parent(spec.name)
    if parent is not None:
        pngs = [out / name for f in (*figs.values(), top) for name in f]
        try:
            tracker.log_files(parent, [readme, page, *csvs, tex, *pngs, *excite_paths], "report")
        except OSError as err:  # a read-only results folder holds the parent's artifacts: the report still stands
            print(f"report: not attached to the study's parent run ({err.strerror or err}); its files are in {out}",
                  file=sys.stderr)  # fmt: skip
    return readme
