"""Config keys as study files write them: which dotted keys exist, whether a value is allowed for one, how a level
is shown, and seeds. Shared by the spec's sections (`spec`, `search`); every error one line naming the field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ablations.config import RunConfig, did_you_mean, flatten, shorten, unflatten, validation_message
from ablations.errors import SenetError

MAX_SEEDS = 10_000  # seeds per study
_SECTIONS = {name: list(fields) for name, fields in RunConfig().model_dump(exclude={"seed"}).items()}
DATA_SEED = "data.data_seed"


def check_key(key: str, path: str) -> None:
    """Raise SenetError unless `key` is a dotted RunConfig field (the seed comes from `seeds`, never a key)."""
    section, _, field = key.partition(".")
    if key == "seed":
        raise SenetError(f"{path}: trial seeds come from the study's `seeds`, not from a config key (for one run: "
                         "seeds=N after the study, e.g. senet-ablate sweep demo seeds=3)")  # fmt: skip
    known = [f"{s}.{f}" for s, fields in _SECTIONS.items() for f in fields]
    if section not in _SECTIONS:
        raise SenetError(f"{path}: unknown key; allowed sections: {', '.join(_SECTIONS)}{did_you_mean(key, known)}")
    if not field:
        raise SenetError(f"{path}: is a section; give its fields, e.g. {section}.{_SECTIONS[section][0]}")
    if field not in _SECTIONS[section]:
        fields = ", ".join(_SECTIONS[section])
        raise SenetError(f"{path}: unknown key; allowed in {section}: {fields}{did_you_mean(key, known)}")


def check_value(key: str, value: Any, path: str) -> None:
    """Raise SenetError unless `value` is a valid value of the field `key`, naming it as `path`."""
    check_key(key, path)
    try:
        RunConfig.model_validate(unflatten({key: value}))
    except ValidationError as err:
        message = validation_message(err)  # "se.stages.0: ..." → "<path>.0: ..."
        raise SenetError(path + message.removeprefix(key)) from None


def check_settings(settings: Any, path: str) -> dict[str, Any]:
    """A mapping of config keys to values, nested or dotted, as a flat dict with every key and value checked."""
    if not isinstance(settings, dict):
        raise SenetError(f"{path}: must be a mapping of config keys to values, got {shorten(settings)}")
    flat = flatten(settings)
    for key, value in flat.items():
        check_value(key, value, f"{path}.{key}")
    return flat


def show_level(value: Any) -> str:
    """A level as a user would type it after `--set KEY=`."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(map(show_level, value)) + "]"
    if isinstance(value, dict):  # a per-stage r: {2: 8, 3: off}
        return "{" + ", ".join(f"{k}: {'off' if v in (None, False) else show_level(v)}" for k, v in value.items()) + "}"
    return str(value)


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
