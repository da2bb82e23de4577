"""A search's designs before anything trains: each design of the space as the configuration it runs (recipe →
base → design), its cost from the config alone, and whether it meets the constraints known before training
(params, GFLOPs): an infeasible design is rejected untrained and costs nothing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ablations.config import Host, RunConfig
from ablations.costs import cost, input_shape
from ablations.study.search import BEFORE_TRAINING, design_label
from ablations.study.spec import Point, StudySpec
from ablations.study.trials import resolve_point

SAMPLE = 2000  # designs costed by a plan of a larger space: a seeded sample, its feasible share an estimate


@dataclass(frozen=True)
class Design:
    """One design of a search's space as it would train."""

    label: str
    settings: dict[str, Any]  # the design's dotted keys and levels
    config: RunConfig  # resolved for the host, seed 0
    params: int
    gflops: float  # per image at the data's size
    broken: str  # the first constraint it breaks ("params 512,000 > 480,000"); empty if feasible
    latency_ms: float | None = None  # measured alone on the device, when the search needs it (before training)

    @property
    def feasible(self) -> bool:
        return not self.broken

    @property
    def num_classes(self) -> int:
        return input_shape(self.config)[2]


def design(spec: StudySpec, settings: dict[str, Any], host: Host, label: str | None = None) -> Design:
    """`settings` on top of the study's recipe and base, costed and checked against the constraints known before
    training."""
    assert spec.search is not None
    label = label or design_label(settings)
    config = resolve_point(spec, Point(label, settings, settings, "search.space"), {}).resolved(host)
    c = cost(config)
    values = {"params": c.params, "gflops": c.gflops}
    broken = ""
    for name in BEFORE_TRAINING:
        limit = spec.search.constraints.get(name)
        if limit is not None and values[name] > limit.max:
            broken = f"{name} {values[name]:,.6g} > {limit.max:,.6g}"
            break
    return Design(label, settings, config, c.params, c.gflops, broken)


def plan_designs(spec: StudySpec, host: Host, sample: int = SAMPLE) -> tuple[list[Design], bool]:
    """The space's designs, every one of them up to `sample` designs, else a seeded sample of `sample` (True: sampled).

    Raises:
        SenetError: a design the backbone cannot build or a bad combination, naming the design.
    """
    assert spec.search is not None
    every = list(spec.search.designs())
    sampled = len(every) > sample
    chosen = random.Random(0).sample(every, sample) if sampled else every
    return [design(spec, d, host) for d in chosen], sampled


def references(spec: StudySpec, host: Host) -> list[Design]:
    """The search's reference designs (standard SE, no SE by default), trained first."""
    assert spec.search is not None
    return [design(spec, ref.set, host, ref.label) for ref in spec.search.references]
