"""How a table's setting differs from the paper's (dataset, backbone, epochs and whether the curves had flattened,
SE bottleneck widths, FC biases, the metrics that can be compared), so its paper comparison is not read as a
replication check."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from ablations.config import RunConfig
from ablations.costs import frozen_options, input_shape
from ablations.paper import tables as paper_tables
from ablations.reporting.fmt import num
from ablations.reporting.results import Factor, Level
from ablations.study.spec import STANDARD_SE
from senet_core import build_model, list_models, model_info, se_blocks

TOP5_FROM = 11  # classes from which top-5 error says something (with K ≤ 10 it is a handful of test images)
STILL_FALLING = 0.1  # points of validation error the last epoch still gained for a curve to count as not flat
# The datasets of the paper's tables (ImageNet unless listed), with their classes.
PAPER_DATA = {"Table 4": ("CIFAR-10", 10), "Table 5": ("CIFAR-100", 100), "Table 6": ("Places365", 365)}
IMAGENET = ("ImageNet", 1000)


@dataclass(frozen=True)
class Difference:
    """One aspect of the setting: ours, the paper's, and whether they are the same."""

    aspect: str
    ours: str
    paper: str
    same: bool = False


def top5_comparable(classes: int) -> bool:
    """Top-5 error is reported and compared only with more than 10 classes."""
    return classes >= TOP5_FROM


def table_classes(factor: Factor) -> int:
    """K of the table's dataset (its levels share one)."""
    return max((lv.classes() for lv in factor.levels), default=0)


def _table_numbers(text: str) -> set[int]:
    """ "Ablations (Tables 10-16)" → {10, ..., 16}; "CIFAR-10/100 (Tables 4, 5)" → {4, 5}."""
    found: set[int] = set()
    for m in re.finditer(r"Tables? ([\d\s,\-–]+)", text):
        for part in m.group(1).split(","):
            bounds = [int(b) for b in re.split(r"[-–]", part.strip()) if b.strip().isdigit()]
            if bounds:
                found |= set(range(bounds[0], bounds[-1] + 1))
    return found


def paper_setup(names: list[str]) -> dict | None:
    """The paper's training setup (`training_setups` of the JSON copy) that covers the tables `names`."""
    wanted = {int(n.removeprefix("Table ")) for n in names}
    return next((s for s in paper_tables()["training_setups"] if wanted & _table_numbers(s["setting"])), None)


@lru_cache(maxsize=64)
def _widths(name: str, frozen: tuple) -> tuple[tuple[int, int, int], ...]:
    """(stage, channels, hidden units) of each SE stage of a network, built on `meta` (no memory, no init)."""
    with torch.device("meta"):
        net = build_model(name, dict(frozen))
    stages: dict[int, tuple[int, int]] = {}
    for block_name, block in se_blocks(net).items():
        stage = int(block_name.split("_")[1])
        stages.setdefault(stage, (block.channels, block.fc1.out_channels))
    return tuple((s, c, h) for s, (c, h) in sorted(stages.items()))


def se_widths(config: RunConfig) -> tuple[tuple[int, int, int], ...]:
    """(stage, channels, hidden units) per SE stage of the level's network: channels // r as `senet_core` builds
    it (never below 1), the first block of each stage; empty without SE."""
    if not config.se.enabled or config.model.name not in list_models():
        return ()
    channels, _, classes = input_shape(config)
    options = config.model_options(channels, classes)
    return _widths(config.model.name, frozen_options(options))


def _widths_text(r: int | dict[int, int | None], widths: tuple[tuple[int, int, int], ...]) -> str:
    hidden = " / ".join(str(h) for _, _, h in widths)
    channels = " / ".join(str(c) for _, c, _ in widths)
    rs = r if isinstance(r, int) else " / ".join(str(r.get(stage)) for stage, _, _ in widths)  # per stage
    return f"r = {rs}: {hidden} hidden units on {channels} channels"


def _ours_widths(levels: list[Level]) -> str:
    seen: dict[tuple, str] = {}
    for lv in levels:
        widths = se_widths(lv.config)
        if widths:
            r = lv.config.se.reduction
            seen.setdefault((frozen_options({"r": r}), widths), _widths_text(r, widths))
    return "; ".join(seen.values()) or "no SE level"


def _paper_widths(levels: list[Level]) -> str:
    """SE-ResNet-50's bottlenecks (Table 1) at each r of the published SE rows the table's levels match."""
    arch = paper_tables()["table1_se_resnet50_architecture"]
    rs = sorted({int({**STANDARD_SE, **lv.paper.options}["se.reduction"]) for lv in levels
                 if lv.paper is not None and lv.paper.model.startswith("se_")})  # fmt: skip
    out = [_widths_text(r, tuple((a["stage"], a["se_fc_out"], a["se_fc_out"] // r) for a in arch)) for r in rs]
    return "; ".join(out) or "—"


def last_gains(levels: list[Level]) -> tuple[float, float]:
    """Mean drop of validation top-1 error (points; positive = still improving) over the table's finished runs in
    the last epoch and in the one before it (NaN where the runs have too few epochs)."""
    last, before = [], []
    for lv in levels:
        for curve in lv.curves:
            epochs = sorted(curve)
            if len(epochs) >= 2:
                last.append(curve[epochs[-2]] - curve[epochs[-1]])
            if len(epochs) >= 3:
                before.append(curve[epochs[-3]] - curve[epochs[-2]])
    mean = lambda xs: math.fsum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return mean(last), mean(before)


def _epochs_text(levels: list[Level]) -> str:
    epochs = ", ".join(map(str, sorted({lv.config.train.epochs for lv in levels})))
    last, before = last_gains(levels)
    if math.isnan(last):
        return f"{epochs} (no validation curve to judge flattening)"
    state = "still falling" if last >= STILL_FALLING else "flattened"
    gains = f"the last epoch gained {num(last)} points of validation top-1 error"
    if not math.isnan(before):
        gains += f", the one before {num(before)}"
    return f"{epochs}; curves {state}: {gains} (mean over runs)"


def _paper_epochs(setup: dict | None) -> str:
    if setup is None or setup.get("epochs") is None:
        return "not stated"
    text = ("~" if setup.get("epochs_approx") else "") + str(setup["epochs"])
    return f"{text}; lr schedule: {setup['lr_schedule']}" if setup.get("lr_schedule") else text


def _bias(levels: list[Level]) -> str:
    values = sorted({lv.config.se.bias for lv in levels if lv.config.se.enabled})
    return " and ".join("on" if v else "off" for v in values) or "no SE level"


def differences(factor: Factor) -> list[Difference]:
    """The setting of `factor` beside that of the paper tables it mirrors (empty when it mirrors none)."""
    if not factor.tables:
        return []
    levels = factor.levels
    setup = paper_setup(factor.tables)
    data, paper_k = PAPER_DATA.get(factor.tables[0], IMAGENET)
    k = table_classes(factor)
    datasets = ", ".join(sorted({lv.config.data.dataset for lv in levels}))
    ours_net = sorted({model_info(lv.config.model.name).paper_name for lv in levels})
    paper_net = sorted({model_info(lv.paper.model).paper_name for lv in levels if lv.paper is not None})
    paper_bias = {False: "off (§6)", True: "on"}.get(setup.get("fc_bias")) if setup else None  # type: ignore[arg-type]
    ours_bias = _bias(levels)
    metrics = "top-1 and top-5" if top5_comparable(k) else f"top-1 only (top-5 of K = {k} classes is not compared)"
    rows = [
        Difference("dataset", f"{datasets} (K = {k} classes)", f"{data} (K = {paper_k})", (k == paper_k)),
        Difference("backbone", ", ".join(ours_net), ", ".join(paper_net) or "—", ours_net == paper_net),
        Difference("epochs", _epochs_text(levels), _paper_epochs(setup)),
        Difference(
            "SE hidden units per stage",
            _ours_widths(levels),
            _paper_widths(levels) if data == IMAGENET[0] else "not listed",
        ),  # fmt: skip
        Difference(
            "FC biases",
            ours_bias,
            paper_bias or "not stated",
            paper_bias is not None and ours_bias == paper_bias.split()[0],
        ),  # fmt: skip
        Difference("errors compared", metrics, "top-1 and top-5" if paper_k > 10 else "top-1"),
    ]
    return rows
