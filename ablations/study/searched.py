"""A search as the sweep of what it has trained so far: its references, then every design its arms asked for (read
from the Optuna studies in `<results>/search.db`), at the search's seeds. `status`, `retry` and `report` read a
search through it, since no expansion of the spec can list the designs a sampler chose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ablations.study.search import design_label
from ablations.study.spec import Extra, StudySpec

SEARCH_DB = "search.db"
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


def searched(spec: StudySpec, results: Path) -> StudySpec:
    """The search-only `spec` as the sweep of its references and of every design asked so far (told or not, each
    once, in the order first asked); the spec itself when it has a grid to sweep or no search."""
    if spec.search is None or not spec.search_only:
        return spec
    points = [Extra(label=r.label, set=r.set) for r in spec.search.references]
    labels = {p.label for p in points}
    path = results / SEARCH_DB
    if path.exists():
        import optuna

        storage = f"sqlite:///{path.resolve()}"
        known = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        levels = {key: choices(values) for key, values in spec.search.space.items()}
        for name in (study_name(spec, arm) for arm in ARMS if study_name(spec, arm) in known):
            for trial in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
                if trial.state.name not in ("COMPLETE", "RUNNING") or any(
                    trial.params.get(key) not in levels[key] for key in levels
                ):
                    continue  # infeasible designs (FAIL, never trained) and trials of an earlier space
                settings = {key: levels[key][trial.params[key]] for key in levels}
                label = design_label(settings)
                if label not in labels:
                    labels.add(label)
                    points.append(Extra(label=label, set=settings))
    return as_sweep(spec, points, spec.search.seeds)
