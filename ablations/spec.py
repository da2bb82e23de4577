"""Study specs: a YAML file naming the factors of an ablation, expanded into the trials a sweep runs.

A spec is validated once, here; every trial it yields carries a `RunConfig` that `build_config` accepted, so a
bad key, value or model/SE contradiction stops the sweep before anything trains. One trial's configuration is
resolved as: recipe overrides → `base` → its grid levels or `extra` settings → the command line's `--set`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ablations.config import Host, RunConfig, build_config, cost, flatten, shorten, unflatten, validation_message
from ablations.errors import SenetError
from ablations.paper import tables
from ablations.recipes import RECIPES
from senet_core import SEConfig

if TYPE_CHECKING:
    import pandas as pd

STUDIES = files("ablations").joinpath("studies")
# The paper's standard SE block (§3, the bold rows of Tables 10-16): what every ablation is compared with. Its
# design factors are senet_core's defaults; the FC bias and the width rounding are not ablated by the paper.
STANDARD_SE = {f"se.{k}": getattr(SEConfig(), k) for k in ("enabled", "reduction", "squeeze", "excitation",
                                                           "placement", "stages")}  # fmt: skip
MAX_SEEDS = 10_000  # seeds per study
MAX_SPEC_BYTES = 1 << 20  # a study file larger than this is not a study
MAX_NODES = 100_000  # values a study file may hold once its YAML aliases are expanded
_SECTIONS = {name: list(fields) for name, fields in RunConfig().model_dump(exclude={"seed"}).items()}
_NAME = re.compile(r"[a-z0-9_]+")
DATA_SEED = "data.data_seed"
# A level whose data seed follows the run seed is identified with this data seed, so its trial keys differ from
# those of the same configuration at a fixed data seed.
SEED_LINKED = -1


def _check_key(key: str, path: str) -> None:
    """Raise SenetError unless `key` is a dotted RunConfig field (the seed comes from `seeds`, never a key)."""
    section, _, field = key.partition(".")
    if key == "seed":
        raise SenetError(f"{path}: trial seeds come from the study's `seeds`, not from a config key")
    if section not in _SECTIONS:
        raise SenetError(f"{path}: unknown key; allowed sections: {', '.join(_SECTIONS)}")
    if not field:
        raise SenetError(f"{path}: is a section; give its fields, e.g. {section}.{_SECTIONS[section][0]}")
    if field not in _SECTIONS[section]:
        raise SenetError(f"{path}: unknown key; allowed in {section}: {', '.join(_SECTIONS[section])}")


def _check_value(key: str, value: Any, path: str) -> None:
    """Raise SenetError unless `value` is a valid value of the field `key`, naming it as `path`."""
    _check_key(key, path)
    try:
        RunConfig.model_validate(unflatten({key: value}))
    except ValidationError as err:
        message = validation_message(err)  # "se.stages.0: ..." → "<path>.0: ..."
        raise SenetError(path + message.removeprefix(key)) from None


def _check_settings(settings: Any, path: str) -> dict[str, Any]:
    """A mapping of config keys to values, nested or dotted, as a flat dict with every key and value checked."""
    if not isinstance(settings, dict):
        raise SenetError(f"{path}: must be a mapping of config keys to values, got {shorten(settings)}")
    flat = flatten(settings)
    for key, value in flat.items():
        _check_value(key, value, f"{path}.{key}")
    return flat


def _show(value: Any) -> str:
    """A level as a user would type it after `--set KEY=`."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value)


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
        parent = StudySpec if len(e["loc"]) == 1 else Extra
        return f"{path}: unknown key; allowed: {', '.join(parent.model_fields)}"
    return f"{path}: {e['msg']} (got {shorten(e['input'])})"


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
        recipe: a named training recipe (`ablations.recipes`), applied under `base`.
        base: config settings shared by every trial (sections model/se/data/train, nested or dotted).
        grid: dotted config key → its levels; the factors are crossed.
        extra: single configurations added beside the grid.
        seeds: how many seeds (0..n-1) or which seeds every configuration runs with.
        include: other studies (shipped names or paths to .yaml files) whose trials are added.
        reference: the level the study's effects are measured against (default: the paper's standard SE).
        vary_data_seed: each trial's `data.data_seed` is its seed, so the spread over seeds includes the validation
            split, the training and validation subsets and a drawn test subset (default: one fixed data seed, so
            intervals cover initialisation and data order only).
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
    _file: Path | None = PrivateAttr(None)  # the YAML file the spec came from; relative includes resolve next to it
    _where: str = PrivateAttr("")  # how messages name the spec: its file, or its name

    @property
    def where(self) -> str:
        """The spec's file (`<name>.yaml` for a shipped study), or its name when it came from a dict."""
        return self._where or self.name

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
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
        _check_settings(base, "base")
        return base

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, Any]) -> dict[str, Any]:
        grid = flatten(grid)  # `se: {reduction: [...]}` and `se.reduction: [...]` are the same factor
        for key, levels in grid.items():
            path = f"grid.{key}"
            _check_key(key, path)
            if not isinstance(levels, list) or not levels:
                raise SenetError(f"{path}: must be a non-empty list of levels, e.g. [4, 8, 16]; got {shorten(levels)}")
            for i, level in enumerate(levels):
                _check_value(key, level, f"{path}[{i}]")
                if level in levels[:i]:
                    first = levels.index(level)
                    raise SenetError(f"{path}[{i}]: {_show(level)} repeats {path}[{first}]; give each level once")
        return grid

    @field_validator("extra")
    @classmethod
    def _extra(cls, extra: list[Extra]) -> list[Extra]:
        labels: list[str] = []
        for i, point in enumerate(extra):
            if point.label in labels:
                raise SenetError(f"extra[{i}].label: {point.label!r} is used twice; labels name one configuration")
            labels.append(point.label)
            _check_settings(point.set, f"extra[{i}].set")
        return extra

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, seeds: Any) -> list[int]:
        return parse_seeds(seeds, "seeds")

    @field_validator("reference")
    @classmethod
    def _reference(cls, reference: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(reference, "reference")

    @model_validator(mode="after")
    def _has_trials(self) -> StudySpec:
        if not self.grid and not self.extra and not self.include:
            raise SenetError(f"grid: study {self.name!r} has no trials; give a grid, extra configurations or include")
        if self.vary_data_seed and DATA_SEED in {*flatten(self.base), *self.varied_keys()}:
            raise SenetError(f"vary_data_seed: the seed sets {DATA_SEED}; drop it from base, grid and extra")
        return self

    def varied_keys(self) -> set[str]:
        """Config keys the study itself sets per trial: its grid factors and the keys of its extras."""
        return set(self.grid) | {key for point in self.extra for key in flatten(point.set)}

    def points(self) -> list[Point]:
        """The study's own configurations before seeds: the crossed grid, then the extras."""
        out = []
        for combo in itertools.product(*self.grid.values()) if self.grid else ():
            levels = dict(zip(self.grid, combo, strict=True))
            label = ", ".join(f"{k}={_show(v)}" for k, v in levels.items())
            out.append(Point(label, levels, levels, "grid"))
        for i, extra in enumerate(self.extra):
            out.append(Point(extra.label, {"extra": extra.label}, flatten(extra.set), f"extra[{i}]"))
        return out

    def reference_keys(self) -> list[str]:
        """The reference keys that tell this study's trials apart: those it varies. The others are the same in every
        trial (or moved there by `--set`), so they cannot pick the reference."""
        return sorted(self.varied_keys() & set(self.reference))

    def is_reference(self, config: RunConfig) -> bool:
        """Whether `config` is this study's reference level: setting the reference keys leaves it the same network."""
        keys = self.reference_keys()
        moved = {**config.flat(), **{k: self.reference[k] for k in keys}}
        try:
            return build_config(unflatten(moved)).config_hash() == config.config_hash()
        except SenetError:
            return False


def parse_seeds(seeds: Any, path: str = "seeds") -> list[int]:
    """`n` → [0, ..., n-1]; a list of distinct integers ≥ 0 as it is; anything else a SenetError naming `path`."""
    allowed = f"allowed: a count 1..{MAX_SEEDS} or a list of at most {MAX_SEEDS} seeds in 0..{2**31 - 1}"
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise SenetError(f"{path}: {seeds} is not allowed; {allowed}")
        return list(range(seeds))
    if not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS:
        raise SenetError(f"{path}: {shorten(seeds)} is not allowed; {allowed}")
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise SenetError(f"{path}[{i}]: {shorten(seed)} is not allowed; allowed: an integer in 0..{2**31 - 1}")
        if seed in seeds[:i]:
            raise SenetError(f"{path}[{i}]: seed {seed} is listed twice; give each seed once")
    return list(seeds)


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


def shipped_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in STUDIES.iterdir() if p.name.endswith(".yaml"))


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a document whose aliases expand to more than MAX_NODES nodes (the "billion
    laughs": a few aliases of aliases make gigabytes for whoever walks the document, validation included)."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_NODES} values; write settings out")
        return super().construct_document(node)


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in `node` with every alias expanded, counted without expanding (shared nodes counted once each)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    return memo[id(node)]


def _read(path: Path, label: str) -> StudySpec:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SenetError(f"{label}: {size} bytes; a study file is at most {MAX_SPEC_BYTES} bytes of YAML text")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SenetError(f"{label}: cannot read the study file ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise SenetError(f"{label}: not UTF-8 text (byte {err.start}); a study file is YAML text") from None
    if "\x00" in text:
        raise SenetError(f"{label}: holds NUL bytes; a study file is YAML text")
    try:
        tree = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SenetError(f"{label}{line}: not valid YAML ({problem})") from None
    spec = parse_spec(tree, label)
    spec._file = path
    return spec


def load_spec(name_or_path: str | Path) -> StudySpec:
    """A shipped study by name (`ablations/studies/<name>.yaml`) or a user's YAML file, with its includes checked.

    Raises:
        SenetError: a missing file, invalid YAML, a malformed spec or a bad include, in one line naming the
            file and field.
    """
    spec = _load_one(str(name_or_path), None)
    closure(spec)
    return spec


def _load_one(ref: str, near: Path | None, path: str = "study") -> StudySpec:
    """A shipped study name, or a .yaml path (relative paths against `near`, the including file's folder)."""
    if _NAME.fullmatch(ref):
        if ref not in shipped_names():
            raise SenetError(
                f"{path}: {ref!r} is not a study; allowed: {', '.join(shipped_names())}, or a path to a .yaml file"
            )
        resource = STUDIES.joinpath(f"{ref}.yaml")
        return _read(Path(str(resource)), f"{ref}.yaml")
    file = Path(ref).expanduser()
    if near is not None and not file.is_absolute():
        file = near / file
    if not file.is_file():
        shipped = ", ".join(shipped_names())
        raise SenetError(f"{path}: {file}: no such study file; give a path to a .yaml file or one of: {shipped}")
    return _read(file, str(file))


def closure(spec: StudySpec, chain: tuple[str, ...] = ()) -> list[StudySpec]:
    """The spec and every study it includes, depth first, each once; an include cycle is a SenetError."""
    chain = (*chain, spec.name)
    out = [spec]
    near = spec._file.parent if spec._file is not None else None
    for i, ref in enumerate(spec.include):
        child = _load_one(ref, near, f"{spec.where}: include[{i}]")
        if child.name in chain:
            raise SenetError(f"{spec.where}: include[{i}]: cycle {' → '.join((*chain, child.name))}")
        out += [s for s in closure(child, chain) if s.name not in {o.name for o in out}]
    return out


def list_studies() -> list[StudySpec]:
    """Every shipped study, by name."""
    return [load_spec(name) for name in shipped_names()]


@dataclass(frozen=True)
class Trial:
    """One configuration at one seed: the unit the sweep ledger records and a worker trains.

    Attributes:
        config: the resolved configuration, seed set.
        seed: the same as `config.seed`.
        config_hash: `config.config_hash()`, equal for equal networks and recipes however they were spelled (with
            `data.data_seed` = SEED_LINKED when the study ties the data seed to the seed).
        key: `"{config_hash}-s{seed}"`, the trial's identity in the sweep ledger.
        factors: grid key → level for grid trials, `{"extra": label}` for extra ones.
        label: short human name, e.g. "se.reduction=8" or "no SE".
        study: the study the trial first came from (an included study's own name).
        studies: every study the trial belongs to, `study` first.
        labels: the trial's label in each of `studies`.
    """

    config: RunConfig
    seed: int
    config_hash: str
    key: str
    factors: dict[str, Any]
    label: str
    study: str
    studies: tuple[str, ...]
    labels: tuple[str, ...]


def _resolve(spec: StudySpec, point: Point, overrides: dict[str, Any]) -> RunConfig:
    """recipe → base → the point's settings → overrides, validated; a failure names the layer that caused it."""
    recipe = RECIPES[spec.recipe] if spec.recipe else {}
    base = {**recipe, **flatten(spec.base)}
    try:
        return build_config(unflatten({**base, **point.settings, **overrides}))
    except SenetError as err:
        blame = f"{point.origin} ({point.label})"
        for layer, flat in (("base", base), ("--set", {**base, **overrides})):
            try:
                build_config(unflatten(flat))
            except SenetError:
                blame = layer
                break
        raise SenetError(f"{spec.where}: {blame}: {err}") from None


def expand(
    spec: StudySpec,
    overrides: dict[str, Any] | None = None,
    seeds: int | list[int] | None = None,
    host: Host | None = None,
) -> list[Trial]:
    """Every trial of the study and of the studies it includes, each identical trial once.

    Args:
        spec: the study.
        overrides: `--set` values, dotted key → value, applied last to every trial (included studies too).
        seeds: replaces the seeds of every study (a count or a list, as in a spec); None keeps them.
        host: what `auto` settings resolve to (device, precision, channels_last); None = this host. The
            trials carry resolved configurations, so a CPU and a GPU run of one spec are different trials.

    Raises:
        SenetError: a bad override, an override of a key the study varies, a configuration `build_config`
            refuses, or a reference that matches no trial.
    """
    overrides = dict(overrides or {})
    studies = closure(spec)
    for key, value in overrides.items():
        _check_value(key, value, f"--set {key}")
        owner = next((s for s in studies if key in s.varied_keys() or (key == DATA_SEED and s.vary_data_seed)), None)
        if owner is not None:
            raise SenetError(f"--set {key}: study {owner.name!r} varies this key; drop the override or edit the study")
    trials: dict[str, Trial] = {}
    host = host or Host.here()
    for study in studies:
        study_seeds = parse_seeds(seeds, "--seeds") if seeds is not None else study.seeds
        configs = []
        for point in study.points():
            cfg = _resolve(study, point, overrides).resolved(host)
            if study.vary_data_seed:
                cfg = with_data_seed(cfg, SEED_LINKED)
            configs.append(cfg)
            digest = cfg.config_hash()
            for seed in study_seeds:
                key = f"{digest}-s{seed}"
                seen = trials.get(key)
                if seen is None:
                    config = cfg.model_copy(update={"seed": seed})
                    if study.vary_data_seed:
                        config = with_data_seed(config, seed)
                    names, labels = (study.name,), (point.label,)
                    trials[key] = Trial(
                        config, seed, digest, key, point.factors, point.label, study.name, names, labels
                    )
                elif study.name not in seen.studies:
                    trials[key] = replace(seen, studies=(*seen.studies, study.name), labels=(*seen.labels, point.label))
        keys = study.reference_keys()
        if configs and keys and not any(study.is_reference(c) for c in configs):
            shown = ", ".join(f"{k}={_show(study.reference[k])}" for k in keys)
            first = configs[0].flat()
            example = ", ".join(f"{k}: {_show(first[k])}" for k in keys)
            raise SenetError(f"{study.where}: reference: {shown} matches no trial; name one of its levels, e.g. "
                             f"reference: {{{example}}}")  # fmt: skip
    return list(trials.values())


def with_data_seed(config: RunConfig, data_seed: int) -> RunConfig:
    """`config` with `data.data_seed` replaced (no validation: SEED_LINKED is a marker, not a seed)."""
    return config.model_copy(update={"data": config.data.model_copy(update={"data_seed": data_seed})})


def plan(trials: list[Trial]) -> pd.DataFrame:
    """One row per trial with its identity, factor levels and cost: what `sweep --dry-run` prints.

    Factor columns hold the levels as written (None where a trial does not have the factor, e.g. `extra`).
    """
    import pandas as pd  # only for printing plans: kept out of the sweep workers' imports

    factor_keys = list(dict.fromkeys(k for t in trials for k in t.factors))
    columns = ["key", "study", "label", "config_hash", "seed", "model", "dataset", "params", "gflops", "epochs"]
    rows = []
    for t in trials:
        c = cost(t.config)
        rows.append(
            {
                "key": t.key,
                "study": t.study,
                "label": t.label,
                "config_hash": t.config_hash,
                "seed": t.seed,
                "model": t.config.model.name,
                "dataset": t.config.data.dataset,
                "params": c.params,
                "gflops": c.gflops,
                "epochs": t.config.train.epochs,
                "studies": ",".join(t.studies),
            }
        )
    df = pd.DataFrame(rows, columns=[*columns, "studies"])
    for i, k in enumerate(factor_keys):  # object columns, so an integer level stays an integer beside None
        df.insert(5 + i, k, pd.Series([t.factors.get(k) for t in trials], dtype=object))
    return df
