"""Every number of a search's report, computed once: what each arm asked and spent, its search-time front, the
re-evaluation of the fronts and the references on fresh seeds (the only read of test error), the selection bias
between the two, each design's probability of staying on the re-evaluated front, the hypervolumes with their
bootstrap intervals, and the parameter importance of the sampler's study (exploratory)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablations.config import Host
from ablations.costs import cost, input_shape
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.pareto import front_mask, front_probability, hypervolume, hypervolume_interval
from ablations.reporting.stats import Paired, Summary, paired, summarize
from ablations.study.search import BEFORE_TRAINING
from ablations.study.searched import (
    ARMS,
    REJECTED,
    SEARCH_DB,
    Told,
    fronts,
    reevaluated,
    searched,
    study_name,
    told,
)
from ablations.study.spec import StudySpec
from ablations.study.trials import resolve_point
from ablations.sweep.status import ReadOptions, study_status

RESAMPLES = 2000  # bootstrap resamples over seeds (front probability, hypervolume interval)
SEED = 0  # of the bootstrap's generator: equal runs give equal reports
COSTS = ("params", "gflops")


def test_metric(name: str) -> str:
    """The test metric a validation objective is re-evaluated on (`final_val_top1_err` → `test_top1_err`)."""
    return name.replace("final_val_", "test_")


@dataclass
class Measured:
    """One design (or reference) with its costs and its metrics per seed, as the ledger holds them."""

    label: str
    params: int
    gflops: float
    digest: str  # its configuration's hash: labels of one network share it (and their trials)
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)  # seed → summary metrics (diverged at chance)
    device_s: dict[int, float] = field(default_factory=dict)  # seed → the trial's wall time

    def values(self, metric: str, seeds: list[int]) -> dict[int, float]:
        """`metric` per seed among `seeds` (a cost: the same at every seed that has a result)."""
        if metric in COSTS:
            return {s: float(getattr(self, metric)) for s in seeds if s in self.seeds}
        return {s: self.seeds[s][metric] for s in seeds if s in self.seeds and metric in self.seeds[s]}

    def summary(self, metric: str, seeds: list[int]) -> Summary:
        values = self.values(metric, seeds)
        return summarize([values[s] for s in sorted(values)])


@dataclass
class Again:
    """A design or reference on the fresh seeds, against the references and the best re-evaluated design."""

    label: str
    arms: tuple[str, ...]  # the arms whose search-time front held it (none: a reference)
    searched: Summary  # the first objective at search time (the common seeds and intensification's)
    fresh_val: Summary  # the same metric on the fresh seeds
    fresh: Summary  # its test metric on the fresh seeds
    cost: float  # the second objective's value (params, GFLOPs), NaN with one objective or a measured one
    on_front: bool  # on the front of the re-evaluated designs' means (test metric against cost)
    p_front: float  # the share of bootstrap resamples over the fresh seeds that keep it on that front
    vs_reference: Paired  # test metric minus the first reference's, seed by seed
    vs_best: Paired  # minus the design of lowest mean test metric: an interval holding 0 is a tie


@dataclass
class Arm:
    arm: str
    asked: list[Told]
    front: list[Told]
    trained: int  # designs asked and told from training (not from a grid's results)
    warm: int  # designs given from a grid's results
    infeasible: int  # asks rejected before training
    pruned: int  # designs a rung stopped
    failed: int  # designs no seed of which gave a result
    device_s: float  # wall time of the trials its told designs read
    hv_search: float  # hypervolume of its search-time front (NaN with one objective)
    hv_fresh: tuple[float, float, float]  # of its front re-evaluated on the fresh seeds, with the bootstrap interval


@dataclass
class SearchAnalysis:
    spec: StudySpec
    objectives: list[str]
    fresh_metric: str
    reference_point: list[float]  # on the re-evaluation's axes (the test metric, then the cost)
    arms: list[Arm]
    again: list[Again]
    gap: Summary  # fresh validation minus search-time validation, over the front designs: the selection bias
    importance: dict[str, float]  # PED-ANOVA over the sampler's told designs; empty when too few
    rungs: list[tuple[int, int, float]]  # (rung epochs, designs with both, Spearman ρ of rung and full-length value)
    device_s: float  # every trial of the search: references, arms, intensification, re-evaluation
    pending: int  # trials of the re-evaluation still without a result


def _measured(spec: StudySpec, opts: ReadOptions) -> tuple[dict[str, Measured], int]:
    """Every design and reference of the search with its per-seed metrics, and how many trials of the
    re-evaluation have no result yet. A design that is the same network as another (a reference, or an equal
    per-stage map) shares its trials, so labels are matched to trials by configuration."""
    assert spec.search is not None
    swept = searched(spec, opts.results)
    trials, statuses = study_status(swept, opts)
    host = Host(trials[0].config.train.device) if trials else Host.here()  # type: ignore[arg-type]
    by_hash: dict[str, Measured] = {}
    fresh = set(spec.search.reevaluate)
    pending = 0
    for s in statuses:
        c = cost(s.trial.config)
        m = by_hash.setdefault(s.trial.config_hash, Measured("", c.params, c.gflops, s.trial.config_hash))
        if s.state != Standing.DONE:
            pending += s.trial.seed in fresh
            continue
        metrics = dict(s.summary)
        if s.outcome == Ending.DIVERGED:  # its errors at chance, its losses without a value
            chance = 100 * (1 - 1 / input_shape(s.trial.config)[2])
            metrics = {k: chance for k in metrics if k.endswith("_err")}
        m.seeds[s.trial.seed] = metrics
        m.device_s[s.trial.seed] = float(s.duration_s or 0.0)
    out: dict[str, Measured] = {}
    for study in (swept, *(swept._included or [])):
        for point in study.points():
            digest = resolve_point(study, point, {}).resolved(host).config_hash()
            if point.label not in out and digest in by_hash:
                m = by_hash[digest]
                out[point.label] = Measured(point.label, m.params, m.gflops, digest, m.seeds, m.device_s)
    return out, pending


def _failures(spec: StudySpec, results: Path) -> dict[str, tuple[int, int]]:
    """Per arm: asks rejected before training (never trained) and designs with no result after it."""
    import optuna

    storage = f"sqlite:///{(results / SEARCH_DB).resolve()}"
    out = {}
    for arm in ARMS:
        try:
            study = optuna.load_study(study_name=study_name(spec, arm), storage=storage)
        except KeyError:
            continue
        fails = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
        rejected = sum(REJECTED in t.user_attrs for t in fails)
        out[arm] = (rejected, len(fails) - rejected)
    return out


def importance(spec: StudySpec, results: Path) -> dict[str, float]:
    """PED-ANOVA importance of each space key for reaching the sampler's front (Optuna's evaluator, on its told
    designs); empty with fewer than 6 told designs, too few for its density estimates."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    storage = f"sqlite:///{(results / SEARCH_DB).resolve()}"
    study = optuna.load_study(study_name=study_name(spec, ARMS[0]), storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len({tuple(sorted(t.params.items())) for t in complete}) < 6 or len(spec.search.space) < 2:
        return {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), normalize=True)
    return {key: float(found.get(key, 0.0)) for key in spec.search.space}


def _point(search_objectives: list[str], spec: StudySpec) -> list[float]:
    """The hypervolume's reference point on the re-evaluation's axes: the declared bound of each objective (a
    validation metric's bound is its test metric's)."""
    assert spec.search is not None
    return [spec.search.reference_point.get(name, math.nan) for name in search_objectives]


def analyse_search(spec: StudySpec, opts: ReadOptions) -> SearchAnalysis:
    """Every number of the search's report.

    Raises:
        SenetError: no search has run in the results folder, or no design of it has been told yet.
    """
    search = spec.search
    assert search is not None
    arms_told = told(spec, opts.results)
    if not any(d.values is not None for designs in arms_told.values() for d in designs):
        raise SenetError(f"report: search {spec.name!r} has told no design in {opts.results / SEARCH_DB}; run "
                         f"`senet-ablate search {spec.name}` first")  # fmt: skip
    measured, pending = _measured(spec, opts)
    objectives = list(search.objectives)
    first = next(o for o in objectives if o not in COSTS and o != "latency_ms")
    fresh_metric = test_metric(first)
    cost_name = next((o for o in objectives if o in BEFORE_TRAINING), None)
    common = [*search.seeds, *search.intensify_seeds()]
    fresh_seeds = list(search.reevaluate)
    front_of = fronts(arms_told)
    own_front = fronts(arms_told, own=True)  # the arms compare on what each asked with the same budget
    again_labels = [r.label for r in search.references] + [
        label for label in (reevaluated(spec, opts.results) or []) if label in measured
    ]
    refs = {r.label for r in search.references}
    rows: list[Measured] = []  # one row per network, named by its first label (a reference's)
    for label in again_labels:
        if label in measured and all(r.digest != measured[label].digest for r in rows):
            rows.append(measured[label])

    def holds(front: list[Told], m: Measured) -> bool:
        return any(d.label in measured and measured[d.label].digest == m.digest for d in front)

    samples = np.full((len(rows), len(fresh_seeds), 2 if cost_name else 1), np.nan)
    for i, m in enumerate(rows):
        values = m.values(fresh_metric, fresh_seeds)
        for j, seed in enumerate(fresh_seeds):
            if seed in values:
                samples[i, j, 0] = values[seed]
                if cost_name:
                    samples[i, j, 1] = float(getattr(m, cost_name))
    rng = np.random.default_rng(SEED)
    has = ~np.all(np.isnan(samples[..., 0]), axis=1)
    means = np.array([np.nanmean(samples[i], axis=0) if has[i] else np.full(samples.shape[2], np.nan)
                      for i in range(len(rows))]) if rows else np.zeros((0, samples.shape[2]))  # fmt: skip
    on = front_mask(means) if rows else np.zeros(0, dtype=bool)
    p_front = front_probability(samples, RESAMPLES, rng) if rows and has.any() else np.zeros(len(rows))
    fresh_sum = [m.summary(fresh_metric, fresh_seeds) for m in rows]
    best = min(range(len(rows)), key=lambda i: fresh_sum[i].mean if fresh_sum[i].n else math.inf) if rows else 0
    base = rows[0].values(fresh_metric, fresh_seeds) if rows else {}
    again = []
    for i, m in enumerate(rows):
        in_arms = tuple(arm for arm, front in front_of.items() if holds(front, m))
        mine = m.values(fresh_metric, fresh_seeds)
        again.append(Again(m.label, () if m.label in refs and not in_arms else in_arms, m.summary(first, common),
                           m.summary(first, fresh_seeds), fresh_sum[i],
                           float(getattr(m, cost_name)) if cost_name else math.nan, bool(on[i]), float(p_front[i]),
                           paired(mine, base), paired(mine, rows[best].values(fresh_metric, fresh_seeds))))  # fmt: skip
    gaps = [a.fresh_val.mean - a.searched.mean for a in again if a.arms and a.fresh_val.n and a.searched.n]
    point = _point(objectives, spec) if cost_name else []
    failures = _failures(spec, opts.results)
    arms = []
    for arm, designs in arms_told.items():
        front = front_of.get(arm, [])
        mine = [d for d in designs if d.values is not None]
        asked = [d.values for d in mine if d.source != "grid"]
        hv_search = hypervolume(np.array(asked), np.array(point)) if point and asked else math.nan
        hv_fresh = (math.nan, math.nan, math.nan)
        idx = [i for i, m in enumerate(rows) if holds(own_front.get(arm, []), m)]
        if point and idx and has[idx].all():
            hv_fresh = hypervolume_interval(samples[idx], np.array(point), RESAMPLES, np.random.default_rng(SEED))
        spent = sum(sum(measured[d.label].device_s.get(s, 0.0) for s in d.seeds) for d in mine if d.label in measured)
        rejected, failed = failures.get(arm, (0, 0))
        warm = sum(d.source == "grid" for d in mine)
        pruned = sum(d.pruned for d in designs)
        trained = len(mine) - warm + pruned
        arms.append(Arm(arm, designs, front, trained, warm, rejected, pruned, failed, spent, hv_search, hv_fresh))
    total = sum(sum(m.device_s.values()) for m in measured.values())
    return SearchAnalysis(spec, objectives, fresh_metric, point, arms, again, summarize(gaps),
                          importance(spec, opts.results), agreement(arms_told, objectives.index(first)), total,
                          pending)  # fmt: skip


def agreement(arms: dict[str, list[Told]], first: int) -> list[tuple[int, int, float]]:
    """How well each rung ranks the designs as their full-length values do: Spearman's ρ of the first validation
    objective over the designs (of any arm, each once) that have both; NaN below 3 designs or with ties only."""
    from scipy import stats

    both: dict[int, dict[str, tuple[float, float]]] = {}
    for designs in arms.values():
        for d in designs:
            for rung, values in d.rungs:
                if d.values is not None:
                    both.setdefault(rung, {}).setdefault(d.label, (values[first], d.values[first]))
    out = []
    for rung, pairs in sorted(both.items()):
        xs, ys = zip(*pairs.values(), strict=True) if pairs else ((), ())
        rho = (
            float(stats.spearmanr(xs, ys).statistic)
            if len(pairs) >= 3 and len(set(xs)) > 1 < len(set(ys))
            else math.nan
        )
        out.append((rung, len(pairs), rho))
    return out
