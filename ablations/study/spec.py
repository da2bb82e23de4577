"""The study spec: the schema of a study file (its base, grid, extras, seeds, includes and reference), validated
once, here, with every error one line naming the field and what is allowed. Reading files is `load`'s work,
expanding a spec into trials `trials`'.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ablations.config import (
    IDENTITY_VERSION,
    RunConfig,
    build_config,
    flatten,
    shorten,
    unflatten,
)
from ablations.errors import SenetError
from ablations.paper import tables
from ablations.study.keys import DATA_SEED, check_key, check_settings, check_value, parse_seeds, show_level
from ablations.study.recipes import RECIPES
from ablations.study.search import SearchSection
from senet_core import SEConfig

# The paper's standard SE block (§3, the bold rows of Tables 10-16): what every ablation is compared with. Its
# design factors are senet_core's defaults; the FC bias and the width rounding are not ablated by the paper.
STANDARD_SE = {f"se.{k}": getattr(SEConfig(), k) for k in ("enabled", "reduction", "squeeze", "excitation",
                                                           "placement", "stages")}  # fmt: skip
NAME = re.compile(r"[a-z0-9_]+")  # a study's name, and how a shipped study is told from a path
# A level whose data seed follows the run seed is identified with this data seed, so its trial keys differ from
# those of the same configuration at a fixed data seed.
SEED_LINKED = -1


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _spec_message(err: ValidationError) -> str:
    """The first error as one line; our own checks already wrote theirs with the full field path."""
    e = err.errors()[0]
    cause = e.get("ctx", {}).get("error")
    if isinstance(cause, SenetError):
        return str(cause)
    path = _path(e["loc"])
    if e["type"] == "missing":
        return f"{path}: required field is missing"
    if e["type"] == "extra_forbidden":
        parent = _section_at(e["loc"][:-1])
        return f"{path}: unknown key; allowed: {', '.join(parent.model_fields)}"
    return f"{path}: {e['msg']} (got {shorten(e['input'])})"


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The spec's section (a pydantic model) a validation error's location points into: `()` is the spec,
    `("extra", 0)` an Extra, `("search", "budget")` the search's Budget."""
    model: type[BaseModel] = StudySpec
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue  # a list index, or a dict's key
        kinds = [model.model_fields[part].annotation]
        while kinds:
            kind = kinds.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                model = kind
                break
            kinds += get_args(kind)
    return model


class Point(NamedTuple):
    """One configuration of a study before seeds."""

    label: str  # e.g. "se.reduction=8" or "no SE"
    factors: dict[str, Any]  # grid key → level, or {"extra": label}
    settings: dict[str, Any]  # dotted config keys the point sets on top of `base`
    origin: str  # where in the spec it was written ("grid", "extra[1]"), for messages


class Extra(BaseModel):
    """One single configuration outside the grid, e.g. the no-SE baseline."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)  # how tables and plots name it, e.g. "no SE"
    set: dict[str, Any] = {}  # config keys (dotted or nested) on top of `base`


class StudySpec(BaseModel):
    """One ablation study as written in its YAML file (see `ablations/studies/` for examples).

    Attributes:
        name: lowercase letters, digits and `_`; shipped studies are named like their file.
        description: what the study measures and what it costs.
        mirrors: keys of the paper's tables it reproduces (`ablations.paper.tables()`).
        recipe: a named training recipe (`ablations.study.recipes`), applied under `base`.
        base: config settings shared by every trial (sections model/se/data/train, nested or dotted).
        grid: dotted config key → its levels; the factors are crossed.
        extra: single configurations added beside the grid.
        seeds: how many seeds (0..n-1) or which seeds every configuration runs with.
        include: other studies (shipped names or paths to .yaml files) whose trials are added.
        reference: the level the study's effects are measured against (default: the paper's standard SE).
        vary_data_seed: each trial's `data.data_seed` is its seed, so the spread over seeds includes the validation
            split, the training and validation subsets and a drawn test subset (default: one fixed data seed, so
            intervals cover initialisation and data order only).
        launcher: the cluster's defaults for `--launcher slurm` (`ablations.sweep.slurm.SlurmOptions`); where the
            trials run, never what they are.
        search: a multi-objective search over SE designs (`ablations.study.search`) instead of, or beside, a grid.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    mirrors: list[str] = []
    recipe: str | None = None
    base: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    extra: list[Extra] = []
    seeds: list[int] = [0]
    include: list[str] = []
    reference: dict[str, Any] = dict(STANDARD_SE)
    vary_data_seed: bool = False
    launcher: dict[str, Any] = {}  # defaults of a launcher (`slurm: {partition: ..., time: ...}`); never in keys
    search: SearchSection | None = None
    _file: Path | None = PrivateAttr(None)  # the YAML file the spec came from; relative includes resolve next to it
    _included: list[StudySpec] | None = PrivateAttr(None)  # the `include` studies, once `load` has read them
    _where: str = PrivateAttr("")  # how messages name the spec: its file, or its name

    @property
    def where(self) -> str:
        """The spec's file (`<name>.yaml` for a shipped study), or its name when it came from a dict."""
        return self._where or self.name

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.fullmatch(name):
            raise SenetError(f"name: {name!r} is not allowed; allowed: lowercase letters, digits and _")
        return name

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, mirrors: list[str]) -> list[str]:
        allowed = [k for k in tables() if k.startswith("table")]
        for i, key in enumerate(mirrors):
            if key not in allowed:
                raise SenetError(f"mirrors[{i}]: {key!r} is not a table of the paper; allowed: {', '.join(allowed)}")
        return mirrors

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, name: str | None) -> str | None:
        if name is not None and name not in RECIPES:
            raise SenetError(f"recipe: {name!r} is not a recipe; allowed: {', '.join(RECIPES)}")
        return name

    @field_validator("base")
    @classmethod
    def _base(cls, base: dict[str, Any]) -> dict[str, Any]:
        check_settings(base, "base")
        return base

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, Any]) -> dict[str, Any]:
        grid = flatten(grid)  # `se: {reduction: [...]}` and `se.reduction: [...]` are the same factor
        for key, levels in grid.items():
            path = f"grid.{key}"
            check_key(key, path)
            if not isinstance(levels, list) or not levels:
                raise SenetError(f"{path}: must be a non-empty list of levels, e.g. [4, 8, 16]; got {shorten(levels)}")
            for i, level in enumerate(levels):
                check_value(key, level, f"{path}[{i}]")
                if level in levels[:i]:
                    first = levels.index(level)
                    raise SenetError(f"{path}[{i}]: {show_level(level)} repeats {path}[{first}]; give each level once")
        return grid

    @field_validator("extra")
    @classmethod
    def _extra(cls, extra: list[Extra]) -> list[Extra]:
        labels: list[str] = []
        for i, point in enumerate(extra):
            if point.label in labels:
                raise SenetError(f"extra[{i}].label: {point.label!r} is used twice; labels name one configuration")
            labels.append(point.label)
            check_settings(point.set, f"extra[{i}].set")
        return extra

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, seeds: Any) -> list[int]:
        return parse_seeds(seeds, "seeds")

    @field_validator("reference")
    @classmethod
    def _reference(cls, reference: dict[str, Any]) -> dict[str, Any]:
        return check_settings(reference, "reference")

    @model_validator(mode="after")
    def _has_trials(self) -> StudySpec:
        if not self.grid and not self.extra and not self.include and self.search is None:
            raise SenetError(f"grid: study {self.name!r} has no trials; give a grid, extra configurations, include "
                             "or a search")  # fmt: skip
        if self.vary_data_seed and DATA_SEED in {*flatten(self.base), *self.varied_keys()}:
            raise SenetError(f"vary_data_seed: the seed sets {DATA_SEED}; drop it from base, grid and extra")
        return self

    @property
    def search_only(self) -> bool:
        """A search with no grid, extras or includes: no expansion lists its trials (`study.searched` does)."""
        return self.search is not None and not (self.grid or self.extra or self.include)

    def varied_keys(self) -> set[str]:
        """Config keys the study itself sets per trial: its grid factors and the keys of its extras."""
        return set(self.grid) | {key for point in self.extra for key in flatten(point.set)}

    def points(self) -> list[Point]:
        """The study's own configurations before seeds: the crossed grid, then the extras."""
        out = []
        for combo in itertools.product(*self.grid.values()) if self.grid else ():
            levels = dict(zip(self.grid, combo, strict=True))
            label = ", ".join(f"{k}={show_level(v)}" for k, v in levels.items())
            out.append(Point(label, levels, levels, "grid"))
        for i, extra in enumerate(self.extra):
            out.append(Point(extra.label, {"extra": extra.label}, flatten(extra.set), f"extra[{i}]"))
        return out

    def reference_keys(self) -> list[str]:
        """The reference keys that tell this study's trials apart: those it varies. The others are the same in every
        trial (or moved there by `--set`), so they cannot pick the reference."""
        return sorted(self.varied_keys() & set(self.reference))

    def is_reference(self, config: RunConfig, version: int = IDENTITY_VERSION) -> bool:
        """Whether `config` is this study's reference level: setting the reference keys leaves it the same network
        (the same identity `version`)."""
        keys = self.reference_keys()
        moved = {**config.flat(), **{k: self.reference[k] for k in keys}}
        try:
            return build_config(unflatten(moved)).config_hash(version) == config.config_hash(version)
        except SenetError:
            return False


def parse_spec(tree: Any, source: str | Path | None = None) -> StudySpec:
    """Validate a parsed YAML document into a StudySpec, or raise SenetError naming the field and what is allowed.

    Args:
        tree: the document, a mapping of spec fields.
        source: the file it came from, for messages and to resolve `include` paths next to it.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(tree, dict):
        got = "an empty file" if tree is None else f"a {type(tree).__name__}"
        raise SenetError(f"{where}a study spec must be a mapping of fields (name, description, grid, ...), got {got}")
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        raise SenetError(where + _spec_message(err)) from None
    spec._where = str(source) if source is not None else ""
    return spec
