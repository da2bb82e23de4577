"""A search's ask/tell loop on Optuna: one controller asks the sampler for a design, rejects it untrained when it
breaks a constraint known before training, has it evaluated at the common seeds, and tells the sampler its
objectives; a random arm with the same budget runs beside it. The Optuna studies live in their own storage beside
the ledger (`results/search.db`), with named objectives and parameters, so Optuna's own tools read them; a rerun
resumes them (a design asked but never told is evaluated again, which costs nothing once its trials have results).

How a design is evaluated is the caller's: `evaluate(design, seeds)` returns the mean of each validation metric
over the seeds, or None when no seed gave a result. The sweep's ledger and warm workers are one such evaluator;
a test's fake objective with a known answer is another.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from ablations.config import Host
from ablations.study.search import SearchSection
from ablations.study.search_plan import Design, design, plan_designs
from ablations.study.searched import ARMS, choices, study_name
from ablations.study.spec import StudySpec

ASKS_PER_DESIGN = 20  # asks a loop may spend per design of its budget (re-proposals and infeasible ones are free)
Evaluate = Callable[[Design, list[int]], dict[str, float] | None]


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
    infeasible: dict[str, str] = field(default_factory=dict)  # label → the constraint it broke (never trained)
    failed: list[str] = field(default_factory=list)  # designs no seed of which gave a result
    asks: int = 0


def objective_values(search: SearchSection, d: Design, metrics: dict[str, float]) -> list[float]:
    """The objectives of a design: validation metrics from its evaluation, costs from its config (latency from the
    evaluation, which measures it)."""
    known = {"params": float(d.params), "gflops": d.gflops, **metrics}
    return [known[name] for name in search.objectives]


def run_arm(spec: StudySpec, storage: str, arm: str, evaluate: Evaluate, host: Host) -> ArmResult:
    """Ask, reject, evaluate and tell until the arm has evaluated `budget.designs` designs, the space's designs are
    all known, or it has asked `ASKS_PER_DESIGN` times per design of the budget."""
    search = spec.search
    assert search is not None
    study = open_study(spec, storage, arm)
    levels = {key: choices(values) for key, values in search.space.items()}
    dists = distributions(search)
    result = ArmResult(arm)
    seen: dict[str, Design] = {}

    def design_of(params: dict[str, str]) -> Design:
        settings = {key: levels[key][params[key]] for key in search.space}
        d = design(spec, settings, host)
        seen[d.label] = d
        return d

    def tell(trial: optuna.Trial, d: Design) -> None:
        if d.broken:  # rejected before training: costs nothing; the sampler learns nothing from it but its FAIL
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            result.infeasible[d.label] = d.broken
            return
        if d.label in result.designs:  # proposed again: its values are known, told again at no cost
            study.tell(trial, result.designs[d.label])
            return
        metrics = evaluate(d, list(search.seeds))
        if metrics is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            result.failed.append(d.label)
            return
        for name, limit in search.constraints.items():  # measured by the evaluation (latency): feasible at <= 0
            if name in metrics:
                trial.set_constraint(name, metrics[name] - limit.max)
        values = objective_values(search, d, metrics)
        study.tell(trial, values)
        result.designs.setdefault(d.label, values)

    for frozen in study.get_trials(deepcopy=False):  # what an earlier run of this arm asked and told
        d = design_of(frozen.params)
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            result.designs.setdefault(d.label, list(frozen.values))
        elif frozen.state == optuna.trial.TrialState.FAIL and d.broken:
            result.infeasible[d.label] = d.broken
        elif frozen.state == optuna.trial.TrialState.RUNNING:  # asked, then the controller died: evaluate it now
            tell(optuna.Trial(study, frozen._trial_id), d)
    result.asks = len(study.trials)
    feasible_total = _feasible_total(spec, host)
    while (len(result.designs) < search.budget.designs and result.asks < ASKS_PER_DESIGN * search.budget.designs
           and len(result.designs) + len(result.failed) < feasible_total):  # fmt: skip
        trial = study.ask(dists)
        result.asks += 1
        tell(trial, design_of(trial.params))
    return result


def _feasible_total(spec: StudySpec, host: Host) -> int:
    """How many designs of the space meet the constraints known before training (`plan_designs`' count); a space
    larger than its sample is taken as never exhausted (its size)."""
    assert spec.search is not None
    designs, sampled = plan_designs(spec, host)
    return spec.search.size() if sampled else sum(d.feasible for d in designs)


def run_search(spec: StudySpec, storage: str, evaluate: Evaluate, host: Host | None = None) -> dict[str, ArmResult]:
    """Every arm of the search (the sampler's, then the random one), each with the same budget."""
    assert spec.search is not None
    host = host or Host.here()
    arms = ARMS if spec.search.random_arm else ARMS[:1]
    return {arm: run_arm(spec, storage, arm, evaluate, host) for arm in arms}
