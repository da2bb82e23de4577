"""`senet-ablate search NAME`: the search's designs trained by the sweep machinery. Each design the loop asks for
becomes a one-level sweep of the study (its seeds, the design's settings), so its trials go through the ledger
exactly once, with warm workers, MLflow runs and resume like any sweep's; a design whose trials already have
results (from this search, another one or a grid in the same results folder) is read back, not trained."""

from __future__ import annotations

import math
import statistics

from ablations.outcomes import Ending, Standing
from ablations.study.search import VALIDATION
from ablations.study.search_plan import Design
from ablations.study.searched import SEARCH_DB, as_sweep
from ablations.study.spec import Extra, StudySpec
from ablations.sweep.runner import run
from ablations.sweep.search_loop import ArmResult, Evaluate, run_search
from ablations.sweep.start import SweepOptions


def sweep_evaluator(spec: StudySpec, opts: SweepOptions) -> Evaluate:
    """Evaluate a design as a sweep of its seeds; the mean of each validation metric over the seeds that gave a
    result, a diverged seed's top-1/top-5 error counted at chance (its loss has no value: such a design gives no
    loss objective). None when no seed gave a result."""

    def evaluate(design: Design, seeds: list[int]) -> dict[str, float] | None:
        _, statuses = run(as_sweep(spec, [Extra(label=design.label, set=design.settings)], seeds), opts)
        done = [s for s in statuses if s.state == Standing.DONE]
        if not done:
            return None
        chance = 100 * (1 - 1 / design.num_classes)
        metrics: dict[str, float] = {}
        for name in VALIDATION:
            values = [_value(s.summary, s.outcome, name, chance) for s in done]
            if all(v is not None and math.isfinite(v) for v in values):
                metrics[name] = statistics.fmean(v for v in values if v is not None)
        return metrics

    return evaluate


def _value(summary: dict[str, float], outcome: Ending | None, name: str, chance: float) -> float | None:
    if outcome == Ending.DIVERGED:
        return chance if name.endswith("_err") else None
    return summary.get(name)


def search(spec: StudySpec, opts: SweepOptions) -> dict[str, ArmResult]:
    """Train the references, then run every arm of the search through the sweep; the Optuna studies live in
    `<results>/search.db`."""
    assert spec.search is not None
    storage = f"sqlite:///{(opts.results / SEARCH_DB).resolve()}"
    opts.results.mkdir(parents=True, exist_ok=True)
    run(as_sweep(spec, [Extra(label=r.label, set=r.set) for r in spec.search.references], spec.search.seeds), opts)
    return run_search(spec, storage, sweep_evaluator(spec, opts))


def summary_lines(spec: StudySpec, arms: dict[str, ArmResult]) -> list[str]:
    """Each arm's spend and its search-time front (selected on the numbers it shows: re-evaluation on fresh seeds
    is what a claim needs)."""
    import numpy as np

    from ablations.pareto import front_mask

    assert spec.search is not None
    names = spec.search.objectives
    lines = []
    for arm, r in arms.items():
        lines.append(f"{arm} arm: {len(r.designs)} designs trained, {len(r.infeasible)} rejected untrained, "
                     f"{len(r.failed)} without a result, {r.asks} asks")  # fmt: skip
        if not r.designs:
            continue
        labels = list(r.designs)
        on = front_mask(np.array([r.designs[label] for label in labels]))
        for i in np.flatnonzero(on):
            values = ", ".join(f"{n} {v:,.0f}" if abs(v) >= 1000 else f"{n} {v:.4g}"
                               for n, v in zip(names, r.designs[labels[i]], strict=True))  # fmt: skip
            lines.append(f"  front: {labels[i]}: {values}")
    lines.append("search-time fronts are selected on the values they show; re-evaluate them on fresh seeds before a "
                 "claim (not automated yet: run the front's designs as a grid with other seeds)")  # fmt: skip
    return lines
