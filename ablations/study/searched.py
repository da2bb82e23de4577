"""A search as the sweep of what it has trained so far: its references, then every design its arms asked for (read
from the Optuna studies in `<results>/search.db`), at the search's seeds. `status`, `retry` and `report` read a
search through it, since no expansion of the spec can list the designs a sampler chose."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.study.search import design_label
from ablations.study.spec import Extra, StudySpec

SEARCH_DB = "search.db"
REEVALUATED = "reevaluated"  # the sampler's study's user attribute: the designs the re-evaluation retrains
IN_FLIGHT = "in_flight"  # an arm's study's user attribute: the designs (label, set, seeds) it is training now
REJECTED = "rejected"  # a FAIL trial's user attribute: the constraint its design broke (never trained)
ARMS = ("search", "random")  # the sampler's arm (`<study>`), and the random one (`<study>:random`)


def as_sweep(spec: StudySpec, points: list[Extra], seeds: list[int]) -> StudySpec:
    """The study as a sweep of `points` alone at `seeds` (its name, base and recipe: its trials are the study's)."""
    return spec.model_copy(update={"grid": {}, "extra": points, "seeds": seeds, "include": [], "reference": {},
                                   "search": None})  # fmt: skip


def choices(levels: list[Any]) -> dict[str, Any]:
    """A key's levels as Optuna's categorical choices (strings: Optuna takes no maps or lists) → the levels."""
    return {json.dumps(level, sort_keys=True): level for level in levels}


def study_name(spec: StudySpec, arm: str) -> str:
    return spec.name if arm == "search" else f"{spec.name}:{arm}"


@dataclass(frozen=True)
class Told:
    """A design one arm asked for (or was given from a grid's results), as its Optuna trial records it."""

    label: str
    settings: dict[str, Any]
    values: tuple[float, ...] | None  # its objectives at search time; None while asked but not told
    seeds: tuple[int, ...]  # the seeds its values are the mean of (the common ones, and intensification's)
    source: str  # "search" (asked by the arm) or "grid" (a grid's results, given to the sampler)
    pruned: bool = False  # stopped at a rung: never trained at full length
    rungs: tuple[tuple[int, tuple[float, ...]], ...] = ()  # (rung epochs, its objective values at the rung)


def _storage(results: Path) -> str | None:
    path = results / SEARCH_DB
    return f"sqlite:///{path.resolve()}" if path.exists() else None


def told(spec: StudySpec, results: Path) -> dict[str, list[Told]]:
    """Each arm's designs, each once in the order first asked: told ones with their values, asked ones without;
    infeasible designs (FAIL, never trained) and trials of an earlier space are left out."""
    assert spec.search is not None
    storage = _storage(results)
    if storage is None:
        return {}
    import optuna

    known = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    levels = {key: choices(values) for key, values in spec.search.space.items()}
    out: dict[str, list[Told]] = {}
    for arm in ARMS:
        if study_name(spec, arm) not in known:
            continue
        designs: dict[str, Told] = {}
        for trial in optuna.load_study(study_name=study_name(spec, arm), storage=storage).get_trials(deepcopy=False):
            if trial.state.name not in ("COMPLETE", "RUNNING", "PRUNED") or any(
                trial.params.get(key) not in levels[key] for key in levels
            ):
                continue
            settings = {key: levels[key][trial.params[key]] for key in levels}
            label = design_label(settings)
            done = trial.state.name != "RUNNING"
            if label in designs and (designs[label].values is not None or designs[label].pruned or not done):
                continue
            seeds = tuple(trial.user_attrs.get("seeds", spec.search.seeds))
            rungs = tuple(sorted((int(r), tuple(v)) for r, v in trial.user_attrs.get("rungs", {}).items()))
            values = tuple(trial.values) if trial.state.name == "COMPLETE" else None
            designs[label] = Told(label, settings, values, seeds, trial.user_attrs.get("source", "search"),
                                  trial.state.name == "PRUNED", rungs)  # fmt: skip
        out[arm] = list(designs.values())
    return out


def in_flight(spec: StudySpec, results: Path) -> list[tuple[str, dict[str, Any], tuple[int, ...]]]:
    """What each arm's controller is training now: (label, settings, seeds) of every design of the batch or stage
    it evaluates (a rung's trials carry their `train.epochs`)."""
    assert spec.search is not None
    storage = _storage(results)
    if storage is None:
        return []
    import optuna

    known = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    return [(e["label"], e["set"], tuple(e["seeds"])) for arm in ARMS if study_name(spec, arm) in known
            for e in known[study_name(spec, arm)].user_attrs.get(IN_FLIGHT, [])]  # fmt: skip


def fronts(arms: dict[str, list[Told]], own: bool = False) -> dict[str, list[Told]]:
    """Each arm's search-time front: its told designs no other told design of the arm dominates (selected on the
    very values they show; the re-evaluation is what a claim reads). `own`: among the designs it asked alone, not
    those given from earlier results (how arms with one budget compare)."""
    import numpy as np

    from ablations.pareto import front_mask

    out = {}
    for arm, designs in arms.items():
        done = [d for d in designs if d.values is not None and not (own and d.source == "grid")]
        on = front_mask(np.array([d.values for d in done], dtype=float)) if done else []
        out[arm] = [d for d, keep in zip(done, on, strict=True) if keep]
    return out


def to_reevaluate(spec: StudySpec, results: Path) -> list[Told]:
    """The designs on any arm's search-time front, with or without the designs given from earlier results, each
    once (the sampler's arm first)."""
    again: dict[str, Told] = {}
    arms = told(spec, results)
    for designs in (*fronts(arms).values(), *fronts(arms, own=True).values()):
        for d in designs:
            again.setdefault(d.label, d)
    return list(again.values())


def record_reevaluated(spec: StudySpec, storage: str, labels: list[str]) -> None:
    """Keep, on the sampler's study, which designs the re-evaluation retrains (the arms' search-time fronts)."""
    import optuna

    optuna.load_study(study_name=study_name(spec, ARMS[0]), storage=storage).set_user_attr(REEVALUATED, labels)


def reevaluated(spec: StudySpec, results: Path) -> list[str] | None:
    """The designs the re-evaluation retrains (beside the references), as the last `search` recorded them; None
    before the search has come to its re-evaluation."""
    storage = _storage(results)
    if storage is None:
        return None
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(spec, ARMS[0]), storage=storage)
    except KeyError:  # no sampler's study yet
        return None
    labels = study.user_attrs.get(REEVALUATED)
    return None if labels is None else list(labels)


def rung_label(label: str, rung: int) -> str:
    """How tables and the ledger name a design's trial at a rung."""
    return f"{label} @ {rung} epochs"


def searched(spec: StudySpec, results: Path) -> StudySpec:
    """The search-only `spec` as the sweep of its references and of every design asked so far at the common seeds,
    the intensified designs at their extra seeds and the re-evaluated ones with the references at the fresh seeds
    (these two as studies `<name>__intensify` and `<name>__reevaluate` the sweep includes); the spec itself when it
    has a grid to sweep or no search."""
    if spec.search is None or not spec.search_only:
        return spec
    refs = [Extra(label=r.label, set=r.set) for r in spec.search.references]
    points = {p.label: p for p in refs}
    intensified: dict[str, Extra] = {}
    rungs: dict[int, dict[str, Extra]] = {rung: {} for rung in spec.search.rungs}
    common = set(spec.search.seeds)
    for designs in told(spec, results).values():
        for d in designs:  # a grid's designs too: their trials are done, and the report reads them by label
            for rung, _ in d.rungs:
                label = rung_label(d.label, rung)
                short = Extra(label=label, set={**d.settings, "train.epochs": rung})
                rungs.setdefault(rung, {}).setdefault(label, short)
            if d.pruned or d.values is None:  # asked, not told: trained as `in_flight` says, stage by stage
                continue
            points.setdefault(d.label, Extra(label=d.label, set=d.settings))
            if set(d.seeds) - common:
                intensified.setdefault(d.label, Extra(label=d.label, set=d.settings))
    for label, settings, seeds in in_flight(spec, results):
        group = points if set(seeds) == common else intensified
        group.setdefault(label, Extra(label=label, set=settings))
    again = [*refs, *(points[label] for label in reevaluated(spec, results) or [] if label in points)]
    out = as_sweep(spec, list(points.values()), spec.search.seeds)
    out._included = [
        as_sweep(spec, list(group), seeds).model_copy(update={"name": f"{spec.name}__{part}"})
        for part, group, seeds in (("intensify", intensified.values(), spec.search.intensify_seeds()),
                                   ("reevaluate", again, spec.search.reevaluate),
                                   *((f"rung{r}", g.values(), spec.search.seeds) for r, g in sorted(rungs.items())))
        if group and seeds
    ]  # fmt: skip
    return out


CONFIRM_SEEDS = 5  # seeds of the confirmation grid, after every seed the search used


def confirm_tree(spec: StudySpec, results: Path) -> dict[str, Any]:
    """A grid study of the factors the search-time fronts vary (each at the levels the fronts hold; the keys they
    agree on fixed in its base), with the references beside it and five seeds none of the search saw, so the grid
    report's paired tests make the final claim.

    Raises:
        SenetError: no design of the search has been told yet.
    """
    from ablations.config import flatten
    from ablations.errors import SenetError

    assert spec.search is not None
    front = to_reevaluate(spec, results)
    if not front:
        raise SenetError(f"--confirm: search {spec.name!r} has told no design in {results / SEARCH_DB}; run "
                         f"`senet-ablate search {spec.name}` first")  # fmt: skip
    grid: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for key in spec.search.space:
        levels = [lv for lv in spec.search.space[key] if any(d.settings[key] == lv for d in front)]
        if len(levels) > 1:
            grid[key] = levels
        else:
            fixed[key] = levels[0]
    from ablations.config import Host
    from ablations.study.search_plan import design

    base = design(spec, {}, Host("cpu"), "base").config.flat()  # what a reference keeps of the keys fixed here
    refs = [
        {"label": r.label, "set": {**{k: base[k] for k in fixed}, **flatten(r.set)}} for r in spec.search.references
    ]
    used = [*spec.search.seeds, *spec.search.intensify_seeds(), *spec.search.reevaluate]
    seeds = list(range(max(used) + 1, max(used) + 1 + CONFIRM_SEEDS))
    tree: dict[str, Any] = {
        "name": f"{spec.name}_confirm",
        "description": f"The factors of search {spec.name}'s fronts as a grid, on seeds none of the search saw.",
        "base": {**flatten(spec.base), **fixed},
        "extra": refs,
        "seeds": seeds,
    }
    if spec.recipe:
        tree["recipe"] = spec.recipe
    if grid:
        tree["grid"] = grid
        tree["reference"] = {key: front[0].settings[key] for key in grid}
    else:  # one design on every front: it against the references
        tree["extra"].insert(0, {"label": front[0].label, "set": {}})
    return tree
