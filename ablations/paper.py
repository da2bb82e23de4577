"""The paper's published numbers as rows keyed by model configuration (from `published/senet_tables.json`).

The JSON is a machine-readable copy of the tables of Hu et al. (TPAMI, arXiv:1709.01507v4). Each row here says
which `build_model` configuration it describes, so profiles and reports can put the paper's value beside ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

from senet_core import resolve

# The ablations (§6) removed the FC biases; Tables 2-3 are the released-style models, which keep them.
_ABLATION = {"se.bias": False}
_TABLE2_MODELS = {
    "ResNet-50": "resnet50",
    "ResNet-101": "resnet101",
    "ResNet-152": "resnet152",
    "ResNeXt-50": "resnext50_32x4d",
    "ResNeXt-101": "resnext101_32x4d",
    "VGG-16": "vgg16_bn",
}


@dataclass(frozen=True)
class PaperRow:
    """One published row: which configuration, and what the paper measured for it (None = not published).

    Attributes:
        table: e.g. "Table 10".
        label: the row's name in the paper, e.g. "r = 8" or "SE-PRE".
        model: registry name (`se_` prefix for SE models).
        options: user-facing options on top of the model's defaults.
        params_m: parameters in millions; gflops: multiply-adds in 1e9; top1 / top5: error in % (ImageNet;
            CIFAR-10 for Table 4, which has top-1 only).
    """

    table: str
    label: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    params_m: float | None = None
    gflops: float | None = None
    top1: float | None = None
    top5: float | None = None

    def key(self) -> tuple:
        return config_key(self.model, self.options)


@cache
def tables() -> dict[str, Any]:
    """The raw JSON copy of the paper's tables."""
    return json.loads(files("ablations").joinpath("published/senet_tables.json").read_text())


def config_key(model: str, options: dict[str, Any]) -> tuple:
    """A hashable identity of a model configuration, equal for equal networks however they were spelled."""
    info, se, kwargs = resolve(model, options)
    defaults = {k.split(".", 1)[1]: v for k, v in info.defaults(options).items()}
    return info.name, se, tuple(sorted({**defaults, **kwargs}.items()))


def _ablation_rows() -> list[PaperRow]:
    t = tables()
    rows: list[PaperRow] = []
    for r in t["table10_reduction_ratio"]:
        model, opts, label = ("resnet50", {}, "ResNet-50") if r["r"] is None else (
            "se_resnet50", {**_ABLATION, "se.reduction": r["r"]}, f"r = {r['r']}"
        )  # fmt: skip
        rows.append(PaperRow("Table 10", label, model, opts, r["params_M"], None, r["top1_err"], r["top5_err"]))
    for r in t["table11_squeeze_operator"]:
        opts = {**_ABLATION, "se.squeeze": r["squeeze"].lower()}
        rows.append(PaperRow("Table 11", r["squeeze"], "se_resnet50", opts, None, None, r["top1_err"], r["top5_err"]))
    for r in t["table12_excitation_operator"]:
        opts = {**_ABLATION, "se.excitation": r["excitation"].lower()}
        rows.append(
            PaperRow("Table 12", r["excitation"], "se_resnet50", opts, None, None, r["top1_err"], r["top5_err"])
        )
    for r in t["table13_stages"]:
        stages = r["se_stages"]
        model, opts = ("resnet50", {}) if not stages else ("se_resnet50", {**_ABLATION, "se.stages": stages})
        rows.append(
            PaperRow("Table 13", r["stage"], model, opts, r["params_M"], r["gflops"], r["top1_err"], r["top5_err"])
        )
    placements = {"SE": "standard", "SE-PRE": "pre", "SE-POST": "post", "SE-Identity": "identity"}
    for r in t["table14_integration_strategy"]:
        opts = {**_ABLATION, "se.placement": placements[r["design"]]}
        rows.append(PaperRow("Table 14", r["design"], "se_resnet50", opts, None, None, r["top1_err"], r["top5_err"]))
    for r in t["table15_se_3x3"]:
        opts = {**_ABLATION, "se.placement": "inner" if r["design"] == "SE 3x3" else "standard"}
        rows.append(
            PaperRow(
                "Table 15", r["design"], "se_resnet50", opts, r["params_M"], r["gflops"], r["top1_err"], r["top5_err"]
            )
        )
    for r in t["table16_nosqueeze"]:
        model, opts = {
            "ResNet-50": ("resnet50", {}),
            "NoSqueeze": ("se_resnet50", {**_ABLATION, "se.squeeze": "none"}),
            "SE": ("se_resnet50", dict(_ABLATION)),
        }[r["model"]]
        rows.append(
            PaperRow("Table 16", r["model"], model, opts, r["params_M"], r["gflops"], r["top1_err"], r["top5_err"])
        )
    return rows


def _family_rows() -> list[PaperRow]:
    t = tables()
    rows: list[PaperRow] = []
    for r in t["table2_imagenet_single_crop"]:
        name = _TABLE2_MODELS.get(r["model"])
        if name is None:  # BN-Inception and Inception-ResNet-v2 are not in the library
            continue
        rows.append(PaperRow("Table 2", r["model"], name, {}, None, r["reimpl_gflops"], r["reimpl_top1_err"],
                             r["reimpl_top5_err"]))  # fmt: skip
        rows.append(PaperRow("Table 2", f"SE-{r['model']}", f"se_{name}", {}, None, r["senet_gflops"],
                             r["senet_top1_err"], r["senet_top5_err"]))  # fmt: skip
    for r in t["table4_cifar10"]:
        name = {"ResNet-110": "resnet110", "ResNet-164": "resnet164"}.get(r["model"])
        if name is None:  # WRN and Shake-Shake are not in the library
            continue
        rows.append(PaperRow("Table 4", r["model"], name, {}, top1=r["original_err"]))
        rows.append(PaperRow("Table 4", f"SE-{r['model']}", f"se_{name}", {}, top1=r["senet_err"]))
    for r in t["table3_mobile"]:
        if r["model"] != "MobileNet":
            continue
        rows.append(PaperRow("Table 3", r["model"], "mobilenet_v1", {}, r["reimpl_params_M"], r["reimpl_mflops"] / 1e3,
                             r["reimpl_top1_err"], r["reimpl_top5_err"]))  # fmt: skip
        rows.append(PaperRow("Table 3", f"SE-{r['model']}", "se_mobilenet_v1", {}, r["senet_params_M"],
                             r["senet_mflops"] / 1e3, r["senet_top1_err"], r["senet_top5_err"]))  # fmt: skip
    return rows


@cache
def paper_rows() -> tuple[PaperRow, ...]:
    """Every published row this library can build: the ablations (Tables 10-16) and Tables 2-4."""
    return tuple(_ablation_rows() + _family_rows())


def complexity_rows() -> list[PaperRow]:
    """Rows with a published params or GFLOPs figure, the ones `profile --paper` reproduces."""
    return [r for r in paper_rows() if r.params_m is not None or r.gflops is not None]


def find_rows(model: str, options: dict[str, Any]) -> list[PaperRow]:
    """Published rows describing the same network as `model` with `options` (empty when the paper has none)."""
    key = config_key(model, options)
    return [r for r in paper_rows() if r.key() == key]
