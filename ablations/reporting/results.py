"""A report's raw material: the trials of each table (one per included study), in their ledger states, filled with
their MLflow runs. No statistics here: `analysis` turns these tables into the numbers a report prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ablations.config import RunConfig, build_config, unflatten
from ablations.costs import cost, input_shape
from ablations.errors import SenetError
from ablations.outcomes import CellState, RunStatus, Standing
from ablations.paper import PaperRow
from ablations.reporting.paper_match import paper_match, published, table_names
from ablations.reporting.stats import Summary, summarize
from ablations.study.load import closure
from ablations.study.spec import SEED_LINKED, StudySpec
from ablations.study.trials import Trial, with_data_seed
from ablations.sweep.status import TrialStatus
from ablations.tracking import Tracker, TrialRun

NO_SE = {"se.enabled": False}
STATES = tuple(CellState)  # the order reports count cells in


@dataclass
class Cell:
    """One trial of a level: its state and, when it has one, its FINISHED MLflow run.

    `state` is finished or diverged (a FINISHED run; only finished ones enter the means, diverged ones their own
    rate and the at-chance variant), else failed, running or pending from the sweep ledger and the run records.
    `earlier` is the key of a pending trial's result under an earlier identity version, which the report names and
    never counts as this trial's.
    """

    trial: Trial
    state: CellState
    run: TrialRun | None = None
    reason: str = ""
    earlier: str = ""

    def metric(self, name: str) -> float | None:
        value = self.run.metrics.get(name) if self.run is not None else None
        return None if value is None or math.isnan(value) else float(value)


@dataclass
class Level:
    """One row of a table: a configuration and its trials, one per seed."""

    label: str
    config: RunConfig  # the level's configuration (seed-linked data seed as SEED_LINKED)
    config_hash: str  # its trials' `Trial.config_hash`, the level's identity
    cells: list[Cell]
    paper: PaperRow | None = None
    paper_note: str = ""  # where a borrowed paper row comes from, e.g. "Table 10"
    reference: Level | None = None  # the level this one is compared with (itself for the reference)
    baseline: Level | None = None  # its no-SE counterpart (itself for the baseline)
    curves: list[dict[int, float]] = field(default_factory=list)  # val top-1 error per epoch, per finished run

    def values(self, metric: str) -> dict[int, float]:
        """Seed → metric of the finished cells."""
        finished = (c for c in self.cells if c.state == CellState.FINISHED)
        return {c.trial.seed: v for c in finished if (v := c.metric(metric)) is not None}

    def summary(self, metric: str) -> Summary:
        return summarize([v for _, v in sorted(self.values(metric).items())])

    def count(self, state: CellState) -> int:
        return sum(c.state == state for c in self.cells)

    def classes(self) -> int:
        """K, the classes of the level's dataset (a diverged run counts at the chance error 100·(1 - 1/K) %)."""
        return input_shape(self.config)[2]

    def mean_metric(self, name: str) -> float:
        values = [v for c in self.cells if c.state == CellState.FINISHED and (v := c.metric(name)) is not None]
        return math.fsum(values) / len(values) if values else math.nan

    def wall_s(self) -> float:
        """Mean wall time of the finished runs (MLflow start to end), seconds."""
        spans = [(c.run.end_ms - c.run.start_ms) / 1000 for c in self.cells
                 if c.state == CellState.FINISHED and c.run and c.run.end_ms]  # fmt: skip
        return math.fsum(spans) / len(spans) if spans else math.nan

    def params_m(self) -> float:
        """Parameters in millions: as the runs recorded them, else counted from the configuration."""
        recorded = self.mean_metric("params")
        return (recorded if not math.isnan(recorded) else cost(self.config).params) / 1e6

    def gflops(self) -> float:
        recorded = self.mean_metric("gflops")
        return recorded if not math.isnan(recorded) else cost(self.config).gflops

    @property
    def is_reference(self) -> bool:
        return self.reference is self

    @property
    def is_baseline(self) -> bool:
        return self.baseline is self


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
        return next((lv for lv in self.levels if lv.is_reference), None)

    def baseline(self) -> Level | None:
        return next((lv for lv in self.levels if lv.is_baseline), None)

    def design(self) -> list[Level]:
        """The levels of the factor itself: without the no-SE extra, which answers another question (does SE help
        at all), unless switching SE on and off is the factor."""
        if "se.enabled" in self.study.grid:
            return list(self.levels)
        return [lv for lv in self.levels if not lv.is_baseline]


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
        outcome = CellState(finished.outcome or CellState.FINISHED)
        reason = ""
        if outcome == CellState.DIVERGED:
            epoch = finished.metrics.get("diverged_epoch")
            reason = f"diverged at epoch {int(epoch)}" if epoch is not None and not math.isnan(epoch) else "diverged"
        return Cell(trial, outcome, finished, reason)
    ledger = st.state if st is not None else Standing.PENDING
    statuses = {a.status for a in attempts}
    if ledger == Standing.FAILED or (ledger != Standing.RUNNING and RunStatus.FAILED in statuses):
        reason = st.reason if st is not None and st.reason else "run FAILED (see its traceback.txt artifact)"
        return Cell(trial, CellState.FAILED, None, reason)
    if ledger == Standing.RUNNING or RunStatus.RUNNING in statuses:
        return Cell(trial, CellState.RUNNING, None, "still running")
    if st is not None and st.earlier:
        return Cell(trial, CellState.PENDING, None, st.reason, st.earlier)
    killed = sum(a.status == RunStatus.KILLED for a in attempts)
    return Cell(trial, CellState.PENDING, None, f"killed {killed}× and not resumed yet" if killed else "no run yet")


def _curve(tracker: Tracker, attempts: list[TrialRun]) -> dict[int, float]:
    """Validation top-1 error per epoch of one trial: a resumed run logs only the epochs after its restart, so
    the attempts' histories are merged in start order, a later attempt's epoch replacing an earlier one's."""
    curve: dict[int, float] = {}
    for attempt in attempts:
        curve |= tracker.history(attempt.run_id, "val_top1_err")
    return curve


def studies(spec: StudySpec) -> list[StudySpec]:
    """The studies with their own levels: the study itself, or each study it includes (e.g. `paper`)."""
    return [s for s in closure(spec) if s.points()]


def _level_config(trial: Trial, study: StudySpec) -> RunConfig:
    return with_data_seed(trial.config, SEED_LINKED) if study.vary_data_seed else trial.config


def gather(spec: StudySpec, statuses: list[TrialStatus], runs: list[TrialRun], tracker: Tracker) -> list[Factor]:
    """The study's tables: the trials `study_status` gave, with their ledger states and their runs."""
    by_status = {s.trial.key: s for s in statuses}
    by_key: dict[str, list[TrialRun]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    factors = []
    for study in studies(spec):
        groups: dict[str, list[Trial]] = {}
        for s in statuses:
            t = s.trial
            if study.name in t.studies:
                label = t.labels[t.studies.index(study.name)]
                groups.setdefault(t.config_hash, []).append(replace(t, label=label))
        tables = table_names(study)
        rows = published(tables)
        levels: dict[str, Level] = {}
        order = {point.label: i for i, point in enumerate(study.points())}  # the study's order, not the sweep's
        for digest, group in sorted(groups.items(), key=lambda g: order.get(g[1][0].label, len(order))):
            cells = []
            for t in sorted(group, key=lambda t: t.seed):
                attempts = by_key.get(t.key, [])
                finished = next((a for a in attempts if a.status == RunStatus.FINISHED), None)
                cells.append(_cell(t, finished, attempts, by_status.get(t.key)))
            config = _level_config(group[0], study)
            level = Level(_short(group[0].label, study), config, digest, cells)
            level.paper = paper_match(config, study.varied_keys(), rows)
            if level.paper is not None and level.paper.table not in tables:
                level.paper_note = level.paper.table
            level.curves = [_curve(tracker, by_key[c.trial.key]) for c in cells if c.state == CellState.FINISHED]
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
