"""Other libraries' ResNet weights in this library's names, and which of our configurations computes what they do.

Three state-dict layouts are known: ours (`stem.0` conv, `stem.1` BN, `stages.i`, units with `shortcut` and
`se.fc1/fc2`, classifier `fc`); torchvision's, shared by timm's `resnet*` / `seresnet*` / `seresnext*` (`conv1`,
`bn1`, `layer{i+1}`, `downsample`, `se.fc1/fc2`, `fc`); and the one of timm's `legacy_*` models, the PyTorch port
of the Caffe SENets the paper's authors released (`layer0.conv1/bn1`, `se_module.fc1/fc2`, `last_linear`).
`EXTERNAL` says which configuration of ours computes exactly what each supported network computes; the tests
build every one of them and compare outputs. Pure torch: reading files and fetching weights is `ablations.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from senet_core.errors import SenetError

Layout = Literal["senet", "torchvision", "legacy"]
Source = Literal["timm", "torchvision"]


@dataclass(frozen=True)
class External:
    """A network of another library and the configuration of ours that computes exactly what it computes.

    Attributes:
        source: `timm` or `torchvision`.
        name: its name there (`timm.create_model(name)`, `torchvision.models.<name>`).
        model: our registry name (`se_` prefix for SE nets).
        options: user-facing options on top of our defaults, spelled out even where they equal them.
        released: the port of a Caffe model released by the paper's authors (timm's `legacy_*`).
    """

    source: Source
    name: str
    model: str
    options: Mapping[str, Any]
    released: bool = False

    @property
    def key(self) -> str:
        """`source:name`, e.g. `timm:legacy_seresnet50`."""
        return f"{self.source}:{self.name}"


# torchvision and timm: the stride on the 3×3 conv and a padded, floored stem pool.
_TV = {"model.stem_pool": "torchvision"}
_TV_BOTTLENECK = {"model.stride_layout": "v1.5", **_TV}
# timm's SE: hidden width made divisible by 8 (min 8), FC biases on.
_TIMM_SE = {"se.rounding": "divisible8", "se.bias": True}
# The released Caffe SENets: floor(C / r) hidden units, FC biases, Caffe's unpadded ceil-mode stem pool; the
# SE-ResNets put the stride on the first 1×1 conv (the paper's layout), the SE-ResNeXts on the grouped 3×3.
_CAFFE = {"model.stem_pool": "caffe", "se.rounding": "floor", "se.bias": True}


def _entries() -> list[External]:
    out: list[External] = []
    sources: tuple[Source, ...] = ("torchvision", "timm")
    for source in sources:
        for name in ("resnet18", "resnet34"):
            out.append(External(source, name, name, _TV))
        for name in ("resnet50", "resnet101", "resnet152", "resnext50_32x4d"):
            out.append(External(source, name, name, _TV_BOTTLENECK))
    out.append(External("timm", "resnext101_32x4d", "resnext101_32x4d", _TV_BOTTLENECK))
    for depth in (18, 34):
        out.append(External("timm", f"seresnet{depth}", f"se_resnet{depth}", {**_TV, **_TIMM_SE}))
    for depth in (50, 101, 152):
        out.append(External("timm", f"seresnet{depth}", f"se_resnet{depth}", {**_TV_BOTTLENECK, **_TIMM_SE}))
    for depth in (50, 101):
        name = f"seresnext{depth}_32x4d"
        out.append(External("timm", name, f"se_resnext{depth}_32x4d", {**_TV_BOTTLENECK, **_TIMM_SE}))
    # timm's legacy_seresnet18/34 (not the authors' release) put a ReLU between the last BN and the SE block; no
    # configuration of ours computes that, so they are not in the table.
    for depth in (50, 101, 152):
        out.append(External("timm", f"legacy_seresnet{depth}", f"se_resnet{depth}",
                            {"model.stride_layout": "original", **_CAFFE}, released=True))  # fmt: skip
    for depth in (50, 101):
        out.append(External("timm", f"legacy_seresnext{depth}_32x4d", f"se_resnext{depth}_32x4d",
                            {"model.stride_layout": "v1.5", **_CAFFE}, released=True))  # fmt: skip
    return out


EXTERNAL: dict[str, External] = {e.key: e for e in _entries()}


def external(key: str) -> External:
    """The table entry for `source:name` (a timm pretrained tag, `name.tag`, is ignored).

    Raises:
        SenetError: the network is not in the table; the message lists the supported ones.
    """
    source, _, name = key.partition(":")
    found = EXTERNAL.get(f"{source}:{name.split('.')[0]}")
    if found is None:
        allowed = ", ".join(e.name for e in EXTERNAL.values() if e.source == source) or ", ".join(EXTERNAL)
        raise SenetError(f"{key!r} is not a supported network; allowed: {allowed}")
    return found


def _stage(match: re.Match[str]) -> str:
    return f"stages.{int(match.group(1)) - 1}."


_Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]
_RULES: dict[Layout, list[_Rule]] = {
    "senet": [],
    "torchvision": [
        (re.compile(r"^conv1\."), "stem.0."),
        (re.compile(r"^bn1\."), "stem.1."),
        (re.compile(r"^layer([1-4])\."), _stage),
        (re.compile(r"\.downsample\."), ".shortcut."),
    ],
    "legacy": [
        (re.compile(r"^layer0\.conv1\."), "stem.0."),
        (re.compile(r"^layer0\.bn1\."), "stem.1."),
        (re.compile(r"^layer([1-4])\."), _stage),
        (re.compile(r"\.se_module\."), ".se."),
        (re.compile(r"\.downsample\."), ".shortcut."),
        (re.compile(r"^last_linear\."), "fc."),
    ],
}


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """Which naming `state` uses: `legacy` (released SENets), `torchvision` (also timm's ResNets) or ours."""
    if "layer0.conv1.weight" in state:
        return "legacy"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "torchvision"
    return "senet"


def rename(key: str, layout: Layout) -> str:
    """One state-dict key of `layout` in our names."""
    for pattern, repl in _RULES[layout]:
        key = pattern.sub(repl, key)
    return key


@dataclass(frozen=True)
class Converted:
    """A state dict in our names and what its source tells about the network it came from.

    Attributes:
        state: tensors under our names.
        layout: the source's naming.
        origin: our key → the source's key, for messages.
        implied: options that no tensor shape reveals but the source network computes with: the stem pool and
            the stride layout (torchvision/timm: `torchvision` and `v1.5`; the released SENets: `caffe`, and
            `original` for SE-ResNets, `v1.5` for the grouped SE-ResNeXts). Empty for our own layout.
    """

    state: dict[str, torch.Tensor]
    layout: Layout
    origin: dict[str, str] = field(repr=False)
    implied: dict[str, str]


def convert(state: Mapping[str, torch.Tensor]) -> Converted:
    """`state` (any known layout) in our names; unknown keys pass through unchanged for the strict check."""
    layout = detect_layout(state)
    origin = {rename(k, layout): k for k in state}
    implied: dict[str, str] = {}
    if layout == "torchvision":
        implied = {"model.stem_pool": "torchvision", "model.stride_layout": "v1.5"}
    elif layout == "legacy":
        conv2 = state.get("layer1.0.conv2.weight")
        grouped = conv2 is not None and conv2.shape[0] != conv2.shape[1]
        implied = {"model.stem_pool": "caffe", "model.stride_layout": "v1.5" if grouped else "original"}
    return Converted({ours: state[theirs] for ours, theirs in origin.items()}, layout, origin, implied)


def _hint(key: str, problem: str) -> str:
    if ".se.fc" in key and key.endswith(".bias") and problem != "shape":
        return f"; set se.bias={'true' if problem == 'unexpected' else 'false'}"
    if ".se." in key and problem == "missing":
        return "; the weights have no SE block here: use the plain backbone name, or se.stages"
    if ".se." in key and problem == "unexpected":
        return "; the weights have SE blocks here: use the se_<name> model, or se.stages"
    if ".se.fc" in key:
        return "; check se.reduction and se.rounding (timm: divisible8, the released SENets: floor)"
    if key.startswith("fc."):
        return "; set model.num_classes to the weights' classes"
    return ""


def load_state(model: nn.Module, converted: Converted) -> None:
    """Copy the converted weights into `model`, refusing anything but an exact match of names and shapes.

    A model built on the meta device takes the tensors themselves (no copy, no initialisation needed). Missing
    BN `num_batches_tracked` counters are allowed and set to 0: checkpoints saved before PyTorch 0.4.1, such as
    the ports of the released Caffe models, lack them, and they only count training steps.

    Raises:
        SenetError: the first missing key, unexpected key or shape mismatch, by name (ours, and the source's).
    """
    expected = model.state_dict()
    state = dict(converted.state)

    def named(key: str) -> str:
        theirs = converted.origin.get(key, key)
        return key if theirs == key else f"{key} ({theirs} in the weights)"

    for key in expected:
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                raise SenetError(f"missing key {key}{_hint(key, 'missing')}")
            state[key] = torch.zeros((), dtype=torch.long)
    for key in state:
        if key not in expected:
            raise SenetError(f"unexpected key {named(key)}{_hint(key, 'unexpected')}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise SenetError(
                f"shape mismatch at {named(key)}: {tuple(value.shape)} in the weights, "
                f"{tuple(expected[key].shape)} in the model{_hint(key, 'shape')}"
            )
        state[key] = value.to(expected[key].dtype)
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(state, strict=True, assign=on_meta)
