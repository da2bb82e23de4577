"""A study's trials: every configuration of a spec and of the studies it includes, resolved (recipe → base →
level → `--set`), validated (data sizes too, where the dataset's are known) and crossed with its seeds, each
identical trial once; and the plan `--dry-run` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ablations.config import (
    EARLIER_IDENTITIES,
    IDENTITY_VERSION,
    Host,
    RunConfig,
    build_config,
    check_graphs,
    check_sizes,
    flatten,
    unflatten,
)
from ablations.costs import cost
from ablations.errors import SenetError
from ablations.study.keys import DATA_SEED, check_value, parse_seeds, show_level
from ablations.study.load import closure
from ablations.study.overrides import reshape, split
from ablations.study.recipes import RECIPES
from ablations.study.spec import SEED_LINKED, Point, StudySpec

if TYPE_CHECKING:
    import pandas as pd

MAX_TRIALS = 100_000  # trials one sweep may expand to


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
        earlier: its keys under the earlier identity versions (version → key), where results made before a bump
            of IDENTITY_VERSION are found.
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
    earlier: dict[int, str] = field(default_factory=dict)


def _build(flat: dict[str, Any]) -> RunConfig:
    """A validated configuration whose data sizes fit its dataset where they are known without reading it."""
    cfg = build_config(unflatten(flat))
    check_sizes(cfg.data)
    return cfg


def resolve_point(spec: StudySpec, point: Point, overrides: dict[str, Any]) -> RunConfig:
    """recipe → base → the point's settings → overrides, validated; a failure names the layer that caused it."""
    recipe = RECIPES[spec.recipe] if spec.recipe else {}
    base = {**recipe, **flatten(spec.base)}
    try:
        return _build({**base, **point.settings, **overrides})
    except SenetError as err:
        blame = f"{point.origin} ({point.label})"
        for layer, flat in (("base", base), ("--set", {**base, **overrides})):
            try:
                _build(flat)
            except SenetError:
                blame = layer
                break
        raise SenetError(f"{spec.where}: {blame}: {err}") from None


def expand(
    spec: StudySpec,
    overrides: dict[str, Any] | None = None,
    seeds: int | list[int] | None = None,
    host: Host | None = None,
    version: int = IDENTITY_VERSION,
) -> list[Trial]:
    """Every trial of the study and of the studies it includes, each identical trial once.

    Args:
        spec: the study.
        overrides: the run's overrides (`ablations.study.overrides`): `--set` values, dotted key → value, applied last
            to every trial (included studies too), and the levels, reference levels and seeds that reshape the study.
        seeds: replaces the seeds of every study (a count or a list, as in a spec); None keeps them.
        host: what `auto` settings resolve to (device, precision, channels_last); None = this host. The
            trials carry resolved configurations, so a CPU and a GPU run of one spec are different trials.
        version: the identity version of the keys: the current one, or an earlier one (version 2 reads no data
            files, so `list` counts trials on a host without the datasets).

    Raises:
        SenetError: more than MAX_TRIALS trials (counted before anything is expanded), a bad override, an override
            of a key the study varies, a configuration `build_config` refuses, a reference that matches no trial,
            or a packaged dataset whose files are missing (`ablations.datafiles.MissingData`: its key needs them).
    """
    spec = reshape(spec, overrides or {})
    overrides = split(overrides or {}).settings
    studies = closure(spec)
    _check_count(spec, studies, seeds)
    for key, value in overrides.items():
        check_value(key, value, f"--set {key}")
        owner = next((s for s in studies if key in s.varied_keys() or (key == DATA_SEED and s.vary_data_seed)), None)
        if owner is not None:
            raise SenetError(f"--set {key}: study {owner.name!r} varies this key; drop the override, give its levels "
                             f"for this run ({key}=a,b after the study) or edit the study")  # fmt: skip
    trials: dict[str, Trial] = {}
    host = host or Host.here()
    for study in studies:
        study_seeds = parse_seeds(seeds, "--seeds") if seeds is not None else study.seeds
        configs = []
        for point in study.points():
            cfg = resolve_point(study, point, overrides).resolved(host)
            check_graphs(cfg.train)
            if study.vary_data_seed:
                cfg = with_data_seed(cfg, SEED_LINKED)
            configs.append(cfg)
            digest = cfg.config_hash(version)
            before = {v: cfg.config_hash(v) for v in EARLIER_IDENTITIES if v < version}
            for seed in study_seeds:
                key = f"{digest}-s{seed}"
                seen = trials.get(key)
                if seen is None:
                    config = cfg.model_copy(update={"seed": seed})
                    if study.vary_data_seed:
                        config = with_data_seed(config, seed)
                    names, labels = (study.name,), (point.label,)
                    earlier = {v: f"{h}-s{seed}" for v, h in before.items()}
                    trials[key] = Trial(
                        config, seed, digest, key, point.factors, point.label, study.name, names, labels, earlier
                    )
                elif study.name not in seen.studies:
                    trials[key] = replace(seen, studies=(*seen.studies, study.name), labels=(*seen.labels, point.label))
        keys = study.reference_keys()
        if configs and keys and not any(study.is_reference(c, version) for c in configs):
            shown = ", ".join(f"{k}={show_level(study.reference[k])}" for k in keys)
            first = configs[0].flat()
            example = ", ".join(f"{k}: {show_level(first[k])}" for k in keys)
            raise SenetError(f"{study.where}: reference: {shown} matches no trial; name one of its levels, e.g. "
                             f"reference: {{{example}}}")  # fmt: skip
    return list(trials.values())


def _check_count(spec: StudySpec, studies: list[StudySpec], seeds: int | list[int] | None) -> None:
    """Refuse more than MAX_TRIALS trials from the spec's level counts alone, before any point is built: a small
    file can describe a grid whose expansion alone costs minutes and gigabytes. The count is an upper bound
    (identical trials of included studies merge later)."""
    given = parse_seeds(seeds, "--seeds") if seeds is not None else None
    n = 0
    for study in studies:
        points = math.prod(len(levels) for levels in study.grid.values()) if study.grid else 0
        n += (points + len(study.extra)) * len(given or study.seeds)
    if n > MAX_TRIALS:
        raise SenetError(f"{spec.where}: {n} trials; allowed: at most {MAX_TRIALS} in one sweep")


def plan_trials(spec: StudySpec, overrides: dict[str, Any], host: Host) -> list[Trial]:
    """The trials a sweep of `spec` runs (and the read side reads back), `auto` resolved for `host`.

    Raises:
        SenetError: what `expand` refuses (more than MAX_TRIALS trials among it).
    """
    return expand(spec, overrides, host=host)


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
