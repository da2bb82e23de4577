"""Model registry: builders recorded by name with their metadata, and the one public constructor."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, get_args

from torch import nn

from senet_core.errors import SenetError
from senet_core.se import SE_OFF, SEConfig
from senet_core.stem import StemPool, default_stem_pool
from senet_core.units import Shortcut, StrideLayout

Builder = Callable[..., nn.Module]

SE_PREFIX = "se_"
# User-facing option names (specs, `--set`, the profile CLI) → builder keyword.
MODEL_OPTIONS = {
    "model.stride_layout": "stride_layout",
    "model.stem_pool": "stem_pool",
    "model.shortcut": "shortcut",
    "model.in_channels": "in_channels",
    "model.num_classes": "num_classes",
    "model.zero_init": "zero_init",
}
SE_OPTIONS = {f"se.{f.name}": f.name for f in fields(SEConfig)}
_CHOICES = {
    "model.stride_layout": get_args(StrideLayout),
    "model.stem_pool": get_args(StemPool),
    "model.shortcut": get_args(Shortcut),
}
_COUNTS = ("model.in_channels", "model.num_classes")


@dataclass(frozen=True)
class ModelInfo:
    """What the tests and reports know about a backbone without building it.

    Attributes:
        name: registry name.
        builder: function building the network; keyword-only options, `se` first.
        stages: residual stages (paper numbering, stage 1 = stem) that can hold SE blocks.
        units: (stage, number of SE-able units, their output width) with default options, for Eq. 5.
        num_params: exact parameter count of the baseline with default options (torchvision-style check).
        placements: SE positions the architecture has.
        paper_name: how the paper calls the backbone, e.g. "ResNet-50".
    """

    name: str
    builder: Builder
    stages: tuple[int, ...]
    units: tuple[tuple[int, int, int], ...]
    num_params: int
    placements: tuple[str, ...]
    paper_name: str

    def options(self) -> list[str]:
        """The user-facing option names this backbone accepts."""
        params = inspect.signature(self.builder).parameters
        return sorted(SE_OPTIONS) + sorted(k for k, v in MODEL_OPTIONS.items() if v in params)

    def defaults(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Default value of every `model.*` option this backbone accepts.

        `model.stem_pool` is the one default that depends on another option: it follows `model.stride_layout`
        (the value in `options`, else the backbone's default), as `senet_core.stem.default_stem_pool` says.
        """
        params = inspect.signature(self.builder).parameters
        out = {k: params[v].default for k, v in MODEL_OPTIONS.items() if v in params}
        if "model.stem_pool" in out and out["model.stem_pool"] is None:
            layout = (options or {}).get("model.stride_layout", out.get("model.stride_layout"))
            out["model.stem_pool"] = default_stem_pool(layout)
        return out


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    stages: tuple[int, ...],
    units: tuple[tuple[int, int, int], ...],
    num_params: int,
    paper_name: str,
    placements: tuple[str, ...] = ("standard", "pre", "post", "identity", "inner"),
) -> Callable[[Builder], Builder]:
    """Decorator recording a builder under `name`; a second builder with the same name is refused."""

    def decorate(fn: Builder) -> Builder:
        if name in _MODELS or name.startswith(SE_PREFIX):
            raise ValueError(f"model {name!r} is already registered or uses the reserved prefix {SE_PREFIX!r}")
        _MODELS[name] = ModelInfo(name, fn, stages, units, num_params, placements, paper_name)
        return fn

    return decorate


def list_models() -> list[str]:
    """Registered backbone names; each also builds as `se_<name>` with SE on by default."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    base = name.removeprefix(SE_PREFIX)
    if base not in _MODELS:
        allowed = ", ".join(list_models())
        raise SenetError(f"model: {name!r} is not a known model; allowed: {allowed} (each also as se_<name>)")
    return _MODELS[base]


def resolve(name: str, options: Mapping[str, Any] | None = None) -> tuple[ModelInfo, SEConfig, dict[str, Any]]:
    """Split user-facing options into the SE config and the builder's keywords, checking every name and value.

    `se.enabled` defaults to True for `se_<name>` and False for the plain backbone name.
    """
    info = model_info(name)
    options = dict(options or {})
    accepted = info.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SenetError(f"{unknown[0]}: not an option of {info.name}; allowed: {', '.join(accepted)}")
    se_values = {SE_OPTIONS[k]: v for k, v in options.items() if k in SE_OPTIONS}
    if "enabled" not in se_values and not name.startswith(SE_PREFIX) and se_values:
        first = next(k for k in options if k in SE_OPTIONS)
        raise SenetError(f"{first}: SE is off in {info.name}; use se_{info.name} or also set se.enabled=true")
    se_values.setdefault("enabled", name.startswith(SE_PREFIX))
    if se_values.get("stages") is not None:
        se_values["stages"] = tuple(se_values["stages"])
    se = SEConfig(**se_values)
    if se.enabled and not isinstance(se.reduction, int):
        se = _per_stage(info, se)
    if se.enabled and se.stages is not None:
        # Spell equal networks equally: every stage is "all" (None), no stage is no SE at all.
        if set(se.stages) == set(info.stages):
            se = se.replace(stages=None)
        elif not se.stages:
            se = SE_OFF
    if se.enabled:
        bad = sorted(set(se.stages or ()) - set(info.stages))
        if bad:
            allowed = ", ".join(map(str, info.stages))
            raise SenetError(f"se.stages: stage {bad[0]} does not exist in {info.name}; allowed: {allowed}")
        if se.placement not in info.placements:
            raise SenetError(
                f"se.placement: {se.placement!r} is not allowed for {info.name}; allowed: {', '.join(info.placements)}"
            )
    kwargs = {MODEL_OPTIONS[k]: v for k, v in options.items() if k in MODEL_OPTIONS}
    for key, value in options.items():
        if key in _CHOICES and value not in _CHOICES[key]:
            raise SenetError(f"{key}: {value!r} is not allowed; allowed: {', '.join(_CHOICES[key])}")
        if key in _COUNTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SenetError(f"{key}: {value!r} is not allowed; allowed: an integer >= 1")
        if key == "model.zero_init" and not isinstance(value, bool):
            raise SenetError(f"{key}: {value!r} is not allowed; allowed: true, false")
    return info, (se if se.enabled else SE_OFF), kwargs


def _per_stage(info: ModelInfo, se: SEConfig) -> SEConfig:
    """A per-stage `se.reduction` spelled as the network it builds: one r for every SE stage is that int with those
    stages; otherwise the r of the stages that get SE alone (a stage that is off drops its r); no stage is no SE."""
    assert not isinstance(se.reduction, int)
    for field, stages in (("se.reduction", [stage for stage, _ in se.reduction]), ("se.stages", se.stages or ())):
        bad = [stage for stage in stages if stage not in info.stages]
        if bad:
            allowed = ", ".join(map(str, info.stages))
            raise SenetError(f"{field}: stage {bad[0]} does not exist in {info.name}; allowed: {allowed}")
    active = {stage: r for stage in info.stages if (r := se.reduction_at(stage)) is not None}
    if not active:
        return SE_OFF
    if len(set(active.values())) == 1:
        return se.replace(reduction=next(iter(active.values())), stages=tuple(active))
    return se.replace(reduction=tuple(active.items()), stages=None)


def build_model(name: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`, or `se_<name>` for the SE version (SE on unless `se.enabled` is False).
        options: user-facing options, e.g. `{"se.reduction": 8, "model.num_classes": 10}`.
        **kwargs: the same options with `.` written as `__`, e.g. `se__reduction=8`, `model__in_channels=1`.

    Raises:
        SenetError: unknown model, option or value; the message lists what is allowed.
    """
    merged = dict(options or {})
    merged.update({k.replace("__", "."): v for k, v in kwargs.items()})
    info, se, builder_kwargs = resolve(name, merged)
    return info.builder(se=se, **builder_kwargs)
