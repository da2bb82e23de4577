"""The `search:` section of a study spec: which SE designs a search may propose (a categorical space over config
keys), what it minimises (one or two objectives on validation metrics or costs, never a test metric), what it
must respect (params and GFLOPs known before training, latency measured alone), how it samples and what it may
spend. Validated once, here, with every error one line naming the field and what is allowed; the designs of the
space and their costs are `designs`' and `feasible`'s.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ablations.config import flatten
from ablations.errors import SenetError
from ablations.study.keys import DATA_SEED, check_key, check_value, parse_seeds, show_level

# What a search may minimise: the final validation metrics of a trial (after the last epoch, never the best one)
# and its costs. `params` and `gflops` are known before training; `latency_ms` is measured alone on the device.
VALIDATION = ("final_val_top1_err", "final_val_top5_err", "final_val_loss")
COSTS = ("params", "gflops", "latency_ms")
OBJECTIVES = (*VALIDATION, *COSTS)
BEFORE_TRAINING = ("params", "gflops")  # constraints on these reject a design untrained, at no cost
Sampler = Literal["tpe", "gp", "nsga2", "random"]
MAX_DESIGNS = 100_000  # designs a space may hold (each is one configuration before seeds)


class Limit(BaseModel):
    """An upper bound on one cost (`params: {max: 300000}`)."""

    model_config = ConfigDict(extra="forbid")

    max: float = Field(gt=0)  # in the cost's unit: parameters, GFLOPs per image, milliseconds per batch


class Budget(BaseModel):
    """What a search may spend before it stops (the first limit reached)."""

    model_config = ConfigDict(extra="forbid")

    designs: int = Field(ge=1)  # designs trained (a design's seeds and rungs count once); infeasible ones cost nothing
    gpu_hours: float | None = Field(None, gt=0)  # device time of the search's trials, summed over devices


class Latency(BaseModel):
    """How `latency_ms` is measured: forward (+ backward) of one batch, alone on the device, cached per architecture
    and device."""

    model_config = ConfigDict(extra="forbid")

    batch: int = Field(64, ge=1)  # images per timed batch
    backward: bool = False  # time forward + backward (training) instead of forward alone (inference)


class Reference(BaseModel):
    """A design the search trains first and compares everything with (standard SE, no SE)."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)
    set: dict[str, Any] = {}  # config keys on top of the study's base


class SearchSection(BaseModel):
    """`search:`: the space, objectives, constraints, sampler and budget of a multi-objective search.

    Attributes:
        space: config key → its categorical levels (as a grid's; `model.name` allowed); a design is one level of
            every key.
        objectives: one or two metrics to minimise (`OBJECTIVES`); test metrics are refused (searching on test
            error selects on the test set).
        constraints: cost → `{max: ...}`; on `params`/`gflops` an infeasible design is rejected before training.
        sampler: Optuna's TPE (default), GP (small budgets), NSGA-II (large) or random.
        random_arm: also run a random-sampler arm with the same budget, as the baseline a sampler must beat.
        budget: designs (and optionally GPU-hours) the search may spend.
        parallel: designs asked before the first of them is told (their trials train at once on the sweep's
            workers; TPE's constant liar keeps the batch apart).
        seeds: the common seeds every design trains with during the search.
        intensify: more seeds (the next ones) for a design that enters the front.
        rungs: optional epoch counts below `train.epochs` at which designs are promoted (each rung a trial).
        reevaluate: fresh seeds, never seen by the sampler, on which the front and the references are retrained at
            full length; only this step reads test error.
        references: designs trained first (default: the standard SE block and no SE).
        reference_point: objective → the bound of the hypervolume (required for two objectives).
        latency: how latency is measured.
    """

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Any]
    objectives: list[str] = Field(min_length=1, max_length=2)
    constraints: dict[str, Limit] = {}
    sampler: Sampler = "tpe"
    random_arm: bool = True
    budget: Budget
    parallel: int = Field(4, ge=1)
    seeds: list[int] = [0, 1]
    intensify: int = Field(1, ge=0)
    rungs: list[int] = []
    reevaluate: list[int] = [100, 101, 102]
    references: list[Reference] = [Reference(label="standard SE"), Reference(label="no SE", set={"se.enabled": False})]
    reference_point: dict[str, float] = {}
    latency: Latency = Latency()

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any]) -> dict[str, Any]:
        space = flatten(space)
        if not space:
            raise SenetError("search.space: give at least one config key and its levels, e.g. se.reduction: [4, 8, 16]")
        for key, levels in space.items():
            path = f"search.space.{key}"
            check_key(key, path)
            if key == DATA_SEED:
                raise SenetError(f"{path}: the data seed is not a design choice; it comes from the study's seeds")
            if not isinstance(levels, list) or not levels:
                raise SenetError(f"{path}: must be a non-empty list of levels, e.g. [4, 8, 16]; got {levels!r}")
            for i, level in enumerate(levels):
                check_value(key, level, f"{path}[{i}]")
                if level in levels[:i]:
                    raise SenetError(f"{path}[{i}]: {show_level(level)} repeats level {levels.index(level)}")
        size = math.prod(len(levels) for levels in space.values())
        if size > MAX_DESIGNS:
            raise SenetError(f"search.space: {size} designs; allowed: at most {MAX_DESIGNS} (fewer keys or levels)")
        return space

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: list[str]) -> list[str]:
        for i, name in enumerate(objectives):
            path = f"search.objectives[{i}]"
            if "test" in name.lower():
                raise SenetError(f"{path}: {name!r} is a test metric: searching on it selects on the test set (the "
                                 f"re-evaluation reads test error); allowed: {', '.join(OBJECTIVES)}")  # fmt: skip
            if name not in OBJECTIVES:
                raise SenetError(f"{path}: {name!r} is not an objective; allowed: {', '.join(OBJECTIVES)}")
            if name in objectives[:i]:
                raise SenetError(f"{path}: {name!r} is given twice")
        if not any(name in VALIDATION for name in objectives):
            raise SenetError(f"search.objectives: {objectives} has no validation metric; allowed first: "
                             f"{', '.join(VALIDATION)} (a cost alone needs no training: use --dry-run)")  # fmt: skip
        return objectives

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, constraints: dict[str, Limit]) -> dict[str, Limit]:
        for name in constraints:
            if name not in COSTS:
                raise SenetError(f"search.constraints.{name}: not a cost; allowed: {', '.join(COSTS)}")
        return constraints

    @field_validator("seeds", "reevaluate", mode="before")
    @classmethod
    def _seeds(cls, seeds: Any, info: Any) -> list[int]:
        return parse_seeds(seeds, f"search.{info.field_name}")

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, rungs: list[int]) -> list[int]:
        if any(r < 1 for r in rungs) or rungs != sorted(set(rungs)):
            raise SenetError(f"search.rungs: {rungs} is not allowed; allowed: increasing epoch counts >= 1")
        return rungs

    @model_validator(mode="after")
    def _consistent(self) -> SearchSection:
        shared = sorted(set(self.seeds) & set(self.reevaluate))
        if shared:
            raise SenetError(f"search.reevaluate: seed {shared[0]} is also a search seed; the re-evaluation needs "
                             "fresh seeds the sampler never saw")  # fmt: skip
        if len(self.objectives) == 2:
            missing = [o for o in self.objectives if o not in self.reference_point]
            if missing:
                raise SenetError(f"search.reference_point: give {missing[0]} too (the hypervolume's bound: worse than "
                                 "any design worth keeping, e.g. the no-SE reference's error)")  # fmt: skip
        for name in self.reference_point:
            if name not in self.objectives:
                raise SenetError(
                    f"search.reference_point.{name}: not an objective; allowed: {', '.join(self.objectives)}"
                )
        for i, ref in enumerate(self.references):
            for key, value in flatten(ref.set).items():
                check_value(key, value, f"search.references[{i}].set.{key}")
        return self

    def designs(self) -> Iterator[dict[str, Any]]:
        """Every design of the space, as dotted config keys, in the order the levels are written."""
        for combo in itertools.product(*self.space.values()):
            yield dict(zip(self.space, combo, strict=True))

    def intensify_seeds(self) -> list[int]:
        """The seeds a design entering the front trains with beyond the common ones: the next `intensify` seeds
        after the search's, none of them a re-evaluation seed."""
        out: list[int] = []
        seed = max(self.seeds)
        while len(out) < self.intensify:
            seed += 1
            if seed not in self.reevaluate:
                out.append(seed)
        return out

    def size(self) -> int:
        return math.prod(len(levels) for levels in self.space.values())


def design_label(design: dict[str, Any]) -> str:
    """How tables name a design: `se.reduction=8, se.excitation=tanh`."""
    return ", ".join(f"{k}={show_level(v)}" for k, v in design.items())
