"""A run's overrides of its study in the one flat mapping the ledger records with the sweep: config values for every
trial (`--set`), a factor's levels, reference levels and the seeds; `reshape` gives the study as the run shapes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ablations.config import RunConfig, unflatten
from ablations.errors import SenetError
from ablations.study.keys import check_key, check_value, parse_seeds, show_level
from ablations.study.load import closure, included
from ablations.study.spec import StudySpec, parse_spec

# How the command line's words are recorded (`senet-ablate sweep demo se.reduction=4,8,16 seeds=3`); a plain dotted
# key is a config value on every trial. The prefixes hold a `:`, which no config key does.
LEVELS = "levels:"  # levels:se.reduction → [4, 8, 16]: the factor's levels in this run (`se.reduction=4,8,16`)
REFERENCE = "reference:"  # reference:se.reduction → 8: the level effects are measured against (`reference.se...`)
SEEDS = "seeds"  # → 3 or [0, 4]: every study's seeds (`seeds=3`)


@dataclass(frozen=True)
class Overrides:
    """`overrides` by kind."""

    settings: dict[str, Any]  # config key → value on every trial (checked by `trials.expand`)
    levels: dict[str, list[Any]]  # factor → its levels in this run
    reference: dict[str, Any]  # reference key → level, in every study
    seeds: list[int] | None  # every study's seeds; None keeps them

    @property
    def shapes(self) -> bool:
        """Whether the study itself changes (its grid, reference or seeds), not only its trials' settings."""
        return bool(self.levels or self.reference) or self.seeds is not None


def split(overrides: dict[str, Any]) -> Overrides:
    """The recorded overrides by kind; a factor given both as one value and as levels is a SenetError."""
    settings: dict[str, Any] = {}
    levels: dict[str, list[Any]] = {}
    reference: dict[str, Any] = {}
    seeds = None
    for key, value in overrides.items():
        if key == SEEDS:
            seeds = parse_seeds(value, "seeds")
        elif key.startswith(LEVELS):
            levels[key.removeprefix(LEVELS)] = value
        elif key.startswith(REFERENCE):
            reference[key.removeprefix(REFERENCE)] = value
        else:
            settings[key] = value
    both = sorted(levels.keys() & settings.keys())
    if both:
        raise SenetError(f"{both[0]}: given as one value and as levels; give one of them")
    return Overrides(settings, levels, reference, seeds)


def reshape(spec: StudySpec, overrides: dict[str, Any]) -> StudySpec:
    """`spec` as a run with these overrides shapes it, or `spec` itself when they only set config values.

    A factor's levels replace that factor's levels in every study of the closure whose grid has it; when none has
    it, it becomes a factor of every study with a grid (of `spec` when none has one), crossed with the others, while
    extra configurations keep theirs. Reference levels and seeds replace those of every study. Applying the same
    overrides again changes nothing, so a reader may reshape a reshaped spec.

    Raises:
        SenetError: a bad level, reference or seed list, or a study whose reference is not among the levels of a
            factor given here (one line saying how to add it or to name another reference).
    """
    given = split(overrides)
    if not given.shapes:
        return spec
    for key, levels in given.levels.items():
        _check_levels(key, levels)
    for key, value in given.reference.items():
        check_value(key, value, f"reference.{key}")
    studies = closure(spec)
    gridded = {s.name for s in studies if s.grid} or {spec.name}
    owners = {key: {s.name for s in studies if key in s.grid} or gridded for key in given.levels}
    return _reshaped(spec, given, owners, {})


def _reshaped(spec: StudySpec, given: Overrides, owners: dict[str, set[str]], done: dict[str, StudySpec]) -> StudySpec:
    if spec.name in done:  # a study included twice is one study
        return done[spec.name]
    mine = {key: levels for key, levels in given.levels.items() if spec.name in owners[key]}
    tree = spec.model_dump()
    tree.update(grid={**spec.grid, **mine}, reference={**spec.reference, **given.reference})
    if given.seeds is not None:
        tree["seeds"] = given.seeds
    out = parse_spec(tree, spec.where)  # the spec's own checks (e.g. vary_data_seed against data.data_seed levels)
    out._file, out._where = spec._file, spec._where
    done[spec.name] = out
    out._included = [_reshaped(child, given, owners, done) for child in included(spec)]
    for key, levels in mine.items():
        _check_reference(out, key, levels)
    return out


def _shown(key: str, levels: list[Any]) -> str:
    return f"{key}={','.join(map(show_level, levels))}"


def _check_levels(key: str, levels: Any) -> None:
    if not isinstance(levels, list) or not levels:
        raise SenetError(f"{key}: levels are a non-empty list, e.g. {key}=4,8,16; got {levels!r}")
    shown = _shown(key, levels)
    check_key(key, shown)
    for i, level in enumerate(levels):
        check_value(key, level, f"{shown} (level {i + 1})")
        if _canonical(key, level) in [_canonical(key, v) for v in levels[:i]]:
            raise SenetError(f"{shown}: {show_level(level)} is given twice; give each level once")


def _canonical(key: str, value: Any) -> Any:
    """`value` of the config key `key` as the configuration holds it (`[2]` and `(2,)` alike)."""
    return RunConfig.model_validate(unflatten({key: value})).flat()[key]


def _check_reference(study: StudySpec, key: str, levels: list[Any]) -> None:
    """The study's reference level of `key`, if it names one, must be among `levels`: effects are measured to it."""
    if key not in study.reference:
        return
    ref = study.reference[key]
    if _canonical(key, ref) not in [_canonical(key, v) for v in levels]:
        shown = _shown(key, levels)
        raise SenetError(f"{shown}: the reference of study {study.name!r} is {key}={show_level(ref)}, not among these "
                         f"levels; add it ({shown},{show_level(ref)}) or name one of them as the reference "
                         f"(reference.{key}={show_level(levels[0])})")  # fmt: skip
