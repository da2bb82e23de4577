"""A search's ask/tell loop on Optuna: one controller asks the sampler for a design, rejects it untrained when it
breaks a constraint known before training, has it evaluated at the common seeds, and tells the sampler its
objectives; a random arm with the same budget runs beside it. The Optuna studies live in their own storage beside
the ledger (`results/search.db`), with named objectives and parameters, so Optuna's own tools read them; a rerun
resumes them (a design asked but never told is evaluated again, which costs nothing once its trials have results).

How designs are evaluated is the caller's: `evaluate(designs, seeds)` gives each design's validation metrics per
seed that gave a result (none: no seed did). The sweep's ledger and warm workers are one such evaluator;
a test's fake objective with a known answer is another.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from ablations.config import Host
from ablations.pareto import front_mask
from ablations.study.search import BEFORE_TRAINING, SearchSection, design_label
from ablations.study.search_plan import Design, design, plan_designs
from ablations.study.searched import ARMS, IN_FLIGHT, REJECTED, choices, rung_label, study_name
from ablations.study.spec import StudySpec

ASKS_PER_DESIGN = 20  # asks a loop may spend per design of its budget (re-proposals and infeasible ones are free)
STALE = 5  # known or infeasible proposals in a row before the loop asks an untried design of the space
DEVICE_S = "_device_s"  # the seed's trial's device time, beside its metrics, for the GPU-hours budget
Seeded = dict[int, dict[str, float]]  # seed → that seed's validation metrics (and DEVICE_S)
Evaluate = Callable[[list[Design], list[int]], list[Seeded]]
COSTS_KNOWN = (*BEFORE_TRAINING, "latency_ms")  # objectives a design has before it trains
Latency = Callable[[Design], float]  # a design's latency in ms, measured alone (or cached)


def distributions(search: SearchSection) -> dict[str, optuna.distributions.CategoricalDistribution]:
    return {
        key: optuna.distributions.CategoricalDistribution(list(choices(levels))) for key, levels in search.space.items()
    }


def make_sampler(search: SearchSection, arm: str, seed: int = 0) -> optuna.samplers.BaseSampler:
    """The arm's sampler: the spec's (TPE multivariate with a constant liar, GP, NSGA-II or random), or random."""
    name = "random" if arm == "random" else search.sampler
    startup = max(2, min(10, search.budget.designs // 3))  # random designs before the model: a third of the budget
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, search.budget.designs // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(spec: StudySpec, storage: str, arm: str) -> optuna.Study:
    """The arm's Optuna study (`<study>` or `<study>:random`), created or resumed, with named objectives."""
    assert spec.search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(spec, arm)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=["minimize"] * len(spec.search.objectives),
                                sampler=make_sampler(spec.search, arm))  # fmt: skip
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its dashboard labels axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.search.objectives))
    return study


@dataclass
class ArmResult:
    """What one arm spent and found."""

    arm: str
    designs: dict[str, list[float]] = field(default_factory=dict)  # label → objective values, each design once
    seeds: dict[str, list[int]] = field(default_factory=dict)  # label → the seeds its values are the mean of
    warm: set[str] = field(default_factory=set)  # designs whose results a grid had made (told free, not budget)
    infeasible: dict[str, str] = field(default_factory=dict)  # label → the constraint it broke (never trained)
    failed: list[str] = field(default_factory=list)  # designs no seed of which gave a result
    intensified: list[str] = field(default_factory=list)  # designs given the extra seeds when they entered the front
    pruned: set[str] = field(default_factory=set)  # designs a rung did not promote (told PRUNED, never full length)
    rungs: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # label → rung epochs → objective values
    asks: int = 0
    device_s: float = 0.0  # device time of the trials its designs read (trained now or earlier)

    @property
    def trained(self) -> int:
        """Designs counted against the budget: told from training, not from a grid's results."""
        return len(self.designs) + len(self.pruned) - len(self.warm & set(self.designs))

    def known(self, label: str) -> bool:
        return label in self.designs or label in self.pruned


def objective_values(search: SearchSection, d: Design, metrics: dict[str, float]) -> list[float]:
    """The objectives of a design: validation metrics from its evaluation, costs from its config and its latency
    measurement."""
    known = {"params": float(d.params), "gflops": d.gflops, **metrics}
    if d.latency_ms is not None:
        known["latency_ms"] = d.latency_ms
    return [known[name] for name in search.objectives]


def needs_latency(search: SearchSection) -> bool:
    return "latency_ms" in search.objectives or "latency_ms" in search.constraints


def with_latency(search: SearchSection, d: Design, latency: Latency | None) -> Design:
    """`d` with its latency, when the search needs it and its params/GFLOPs let it through; a design over the
    latency limit is infeasible, rejected before training like one over the params limit."""
    if latency is None or d.broken or not needs_latency(search):
        return d
    ms = latency(d)
    limit = search.constraints.get("latency_ms")
    broken = f"latency_ms {ms:,.4g} > {limit.max:,.4g}" if limit is not None and ms > limit.max else ""
    return dataclasses.replace(d, latency_ms=ms, broken=broken)


def mean_metrics(seeded: Seeded) -> dict[str, float]:
    """The mean of each metric over the seeds that have it, a metric some seed lacks left out."""
    names = set.intersection(*(set(m) for m in seeded.values())) - {DEVICE_S} if seeded else set()
    return {name: statistics.fmean(m[name] for m in seeded.values()) for name in sorted(names)}


def warm_trial(search: SearchSection, d: Design, seeded: Seeded) -> optuna.trial.FrozenTrial | None:
    """A design a grid already trained at every common seed, as a completed trial its arm is told for free."""
    metrics = mean_metrics(seeded)
    if not all(name in metrics or name in COSTS_KNOWN for name in search.objectives):
        return None
    values = objective_values(search, d, metrics)
    params = {key: _choice(search, key, d.settings[key]) for key in search.space}
    return optuna.trial.create_trial(params=params, distributions=distributions(search), values=values,
                                     user_attrs={"source": "grid", "seeds": sorted(seeded)})  # fmt: skip


def _choice(search: SearchSection, key: str, level: Any) -> str:
    return next(name for name, value in choices(search.space[key]).items() if value == level)


def run_arm(
    spec: StudySpec,
    storage: str,
    arm: str,
    evaluate: Evaluate,
    host: Host,
    warm: Sequence[tuple[Design, Seeded]] = (),
    latency: Latency | None = None,
) -> ArmResult:
    """Ask, reject, evaluate and tell until the arm has trained `budget.designs` designs (or spent its GPU-hours),
    the space's designs are all known, or it has asked `ASKS_PER_DESIGN` times per design of the budget.

    `parallel` designs are asked before any is told and evaluated together; a design entering the arm's front is
    evaluated on the intensification seeds too before it is told. `warm` designs (trained by a grid at every common
    seed) are told first, at no cost to the budget. With a latency objective or constraint, `latency` times each
    design before it trains (an infeasible one never does).
    """
    search = spec.search
    assert search is not None
    study = open_study(spec, storage, arm)
    levels = {key: choices(values) for key, values in search.space.items()}
    dists = distributions(search)
    result = ArmResult(arm)
    hours = search.budget.gpu_hours

    def design_of(params: dict[str, str]) -> Design:
        return with_latency(
            search, design(spec, {key: levels[key][params[key]] for key in search.space}, host), latency
        )

    def evaluating(designs: list[Design], seeds: list[int]) -> list[Seeded]:
        """`evaluate`, with the designs and seeds in flight kept on the arm's study meanwhile: what a worker joining
        the search trains (`searched`), rung and intensification trials included, nothing the controller has not
        asked for yet."""
        study.set_user_attr(IN_FLIGHT, [{"label": d.label, "set": d.settings, "seeds": seeds} for d in designs])
        got = evaluate(designs, seeds)
        study.set_user_attr(IN_FLIGHT, [])
        return got

    def spent() -> bool:
        return result.trained >= search.budget.designs or (hours is not None and result.device_s >= 3600 * hours)

    def promote(fresh: list[Design]) -> list[Design]:
        """Train the new designs at each rung in turn (a trial of its own: `train.epochs` = the rung, its own
        schedule); a design goes on only if its values at the rung are on the front of every design the arm has
        trained there. Optuna's pruners refuse multi-objective studies: this is the controller's promotion."""
        for rung in search.rungs:
            at = [d for d in fresh if rung < d.config.train.epochs]
            short = [design(spec, {**d.settings, "train.epochs": rung}, host, rung_label(d.label, rung)) for d in at]
            for d, got in zip(at, evaluating(short, list(search.seeds)) if at else [], strict=True):
                result.device_s += sum(m.get(DEVICE_S, 0.0) for m in got.values())
                if _complete(search, got):
                    result.rungs.setdefault(d.label, {})[rung] = objective_values(search, d, mean_metrics(got))
            seen = {label: v[rung] for label, v in result.rungs.items() if rung in v}
            labels = list(seen)
            on = front_mask(np.array([seen[label] for label in labels])) if labels else np.zeros(0, dtype=bool)
            keep = {labels[i] for i in np.flatnonzero(on)}
            result.pruned.update(d.label for d in at if d.label not in keep)
            fresh = [d for d in fresh if d.label not in result.pruned]
        return fresh

    def settle(batch: list[tuple[optuna.Trial, Design]]) -> None:
        """Evaluate the batch's new designs (through the rungs, if any), intensify those entering the front, then
        tell every trial."""
        fresh = promote(list({d.label: d for _, d in batch if not result.known(d.label)}.values()))
        seeded = dict(zip((d.label for d in fresh), evaluating(fresh, list(search.seeds)), strict=True))
        values = {d.label: objective_values(search, d, mean_metrics(seeded[d.label]))
                  for d in fresh if _complete(search, seeded[d.label])}  # fmt: skip
        extra = search.intensify_seeds()
        if extra and values:
            known = {**result.designs, **values}
            labels = list(known)
            on = front_mask(np.array([known[label] for label in labels]))
            entering = [d for d in fresh if d.label in values and on[labels.index(d.label)]]
            for d, more in zip(entering, evaluating(entering, extra) if entering else [], strict=True):
                seeded[d.label] = {**seeded[d.label], **more}
                values[d.label] = objective_values(search, d, mean_metrics(seeded[d.label]))
                result.intensified.append(d.label)
        for d in fresh:
            result.device_s += sum(m.get(DEVICE_S, 0.0) for m in seeded[d.label].values())
        for trial, d in batch:
            if d.label in result.rungs:
                trial.set_user_attr("rungs", {str(r): v for r, v in result.rungs[d.label].items()})
            if d.label in result.pruned:  # stopped at a rung (now or before)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            if d.label in result.designs:  # proposed again: its values are known, told again at no cost
                trial.set_user_attr("seeds", result.seeds[d.label])
                study.tell(trial, result.designs[d.label])
                continue
            if d.label not in values:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                result.failed.append(d.label)
                continue
            if d.latency_ms is not None:
                trial.set_user_attr("latency_ms", d.latency_ms)
            trial.set_user_attr("seeds", sorted(seeded[d.label]))
            study.tell(trial, values[d.label])
            result.designs[d.label] = values[d.label]
            result.seeds[d.label] = sorted(seeded[d.label])

    told = {frozen_label(spec, t.params) for t in study.get_trials(deepcopy=False)}
    for given, seeded in warm:
        d = with_latency(search, given, latency) if given.label not in told else given
        frozen = warm_trial(search, d, seeded) if d.label not in told and d.feasible else None
        if frozen is not None:
            study.add_trial(frozen)
    resumed = []
    for frozen in study.get_trials(deepcopy=False):  # what an earlier run of this arm asked and told
        d = design_of(frozen.params)
        if "rungs" in frozen.user_attrs:
            result.rungs.setdefault(d.label, {int(r): list(v) for r, v in frozen.user_attrs["rungs"].items()})
        if frozen.state == optuna.trial.TrialState.PRUNED:
            result.pruned.add(d.label)
        elif frozen.state == optuna.trial.TrialState.COMPLETE:
            if d.label not in result.designs:
                result.designs[d.label] = list(frozen.values)
                result.seeds[d.label] = list(frozen.user_attrs.get("seeds", search.seeds))
            if frozen.user_attrs.get("source") == "grid":
                result.warm.add(d.label)
        elif frozen.state == optuna.trial.TrialState.FAIL and d.broken:
            result.infeasible[d.label] = d.broken
        elif frozen.state == optuna.trial.TrialState.RUNNING:  # asked, then the controller died: evaluate it now
            resumed.append((optuna.Trial(study, frozen._trial_id), d))
    if resumed:
        settle(resumed)
    result.asks = len(study.trials) - len(result.warm)
    planned, sampled = plan_designs(spec, host)
    untried = [] if sampled else [d for d in planned if d.feasible]  # an enumerable space's feasible designs
    feasible_total = search.size() if sampled else len(untried)
    rng = random.Random(f"{spec.name}:{arm}")
    stale = 0  # proposals in a row that were known or infeasible
    while (not spent() and result.asks < ASKS_PER_DESIGN * search.budget.designs
           and len(result.designs) + len(result.pruned) + len(result.failed) < feasible_total):  # fmt: skip
        batch: list[tuple[optuna.Trial, Design]] = []
        new: set[str] = set()
        room = search.budget.designs - result.trained
        while len(new) < min(search.parallel, room) and result.asks < ASKS_PER_DESIGN * search.budget.designs:
            if stale >= STALE:  # the sampler keeps proposing what it knows: an untried design, at random
                fresh = [d for d in untried if not result.known(d.label) and d.label not in result.failed
                         and d.label not in result.infeasible and d.label not in new]  # fmt: skip
                if fresh:
                    study.enqueue_trial({k: _choice(search, k, v) for k, v in rng.choice(fresh).settings.items()})
                stale = 0
            trial = study.ask(dists)
            result.asks += 1
            d = design_of(trial.params)
            if d.broken:  # rejected before training: costs nothing; the sampler learns nothing from it but its FAIL
                trial.set_user_attr(REJECTED, d.broken)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                result.infeasible[d.label] = d.broken
                stale += 1
                continue
            batch.append((trial, d))
            if result.known(d.label) or d.label in new:
                stale += 1
            else:
                new.add(d.label)
                stale = 0
            if len(result.designs) + len(result.pruned) + len(result.failed) + len(new) >= feasible_total:
                break
        settle(batch)
    return result


def _complete(search: SearchSection, seeded: Seeded) -> bool:
    """Whether the seeds gave every validation objective (a diverged seed gives no loss)."""
    metrics = mean_metrics(seeded)
    return bool(seeded) and all(name in metrics for name in search.objectives if name not in COSTS_KNOWN)


def frozen_label(spec: StudySpec, params: dict[str, str]) -> str:
    """The label of the design an Optuna trial's parameters name."""
    assert spec.search is not None
    return design_label({key: choices(levels)[params[key]] for key, levels in spec.search.space.items()})


def run_search(
    spec: StudySpec,
    storage: str,
    evaluate: Evaluate,
    host: Host | None = None,
    warm: Sequence[tuple[Design, Seeded]] = (),
    latency: Latency | None = None,
) -> dict[str, ArmResult]:
    """Every arm of the search (the sampler's, then the random one), each with the same budget; `warm` designs
    start the sampler's arm (the random arm learns from nothing, so it is not given them).

    Raises:
        ValueError: the search needs latency and no `latency` measures it.
    """
    assert spec.search is not None
    if latency is None and needs_latency(spec.search):
        raise ValueError("search: a latency objective or constraint needs a latency measurement")
    host = host or Host.here()
    arms = ARMS if spec.search.random_arm else ARMS[:1]
    return {arm: run_arm(spec, storage, arm, evaluate, host, warm if arm == "search" else (), latency) for arm in arms}
