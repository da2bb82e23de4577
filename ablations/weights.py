"""Imported weights (`model.weights`): read them from a file or from timm, load them strictly, name them in a key.

`model.weights` is either
- a file: `.safetensors`, or a `torch.save` file (`.pth`, `.pt`, `.bin`, ...) read with `weights_only=True`; a plain
  state dict or a checkpoint holding one under `state_dict` or `model` (timm and torchvision training scripts, a
  senet-ablate `checkpoint.pt`), `module.` prefixes of (Distributed)DataParallel removed; in our names, torchvision's
  (also timm's ResNets) or those of the released SENets (`senet_core.weights`); no network is needed;
- `timm:NAME` (optionally `NAME.TAG`, a timm pretrained tag): timm builds the network with its pretrained weights,
  downloading them once into its cache (`pip install senet-ablate[weights]`); NAME is one of
  `senet_core.weights.EXTERNAL`.

In a trial key, a file counts by the SHA-256 of its bytes (the same file under two paths is one trial, two files are
two), `timm:NAME` by the name and the timm version.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablations.datafiles import file_sha256
from ablations.errors import SenetError
from senet_core import build_model, model_info
from senet_core.weights import Converted, External, convert, external, load_state

TIMM = "timm:"
FIELD = "model.weights"


def is_timm(source: str) -> bool:
    return source.startswith(TIMM)


def timm_network(source: str) -> External:
    """The table entry of `timm:NAME`; SenetError listing the supported names otherwise."""
    try:
        return external(source)
    except SenetError as err:
        raise SenetError(f"{FIELD}: {err}") from None


@cache
def _timm_version() -> str:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        raise SenetError(f"{FIELD}: timm: names need timm; pip install 'senet-ablate[weights]'") from None


def _file(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise SenetError(f"{FIELD}: {source}: no such file; give a .pth / .safetensors file or timm:NAME")
    return path


def weights_identity(source: str) -> str:
    """What a trial key records of `model.weights`: `sha256:<hex>` of a file, `timm:NAME@<timm version>`."""
    if is_timm(source):
        timm_network(source)
        return f"{source}@{_timm_version()}"
    return f"sha256:{file_sha256(_file(source))}"


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: under `state_dict` or `model` if not at the top, `module.` removed."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise SenetError(
                f"{FIELD}: {source}: holds neither a state dict nor a `state_dict` / `model` entry "
                f"(top-level keys: {', '.join(map(str, list(obj)[:6]))})"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SenetError(f"{FIELD}: {source}: not a state dict (names → tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SenetError(
                f"{FIELD}: {path}: .safetensors needs safetensors; pip install 'senet-ablate[weights]'"
            ) from None
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError for any damaged header
            raise SenetError(f"{FIELD}: {path}: not a readable safetensors file ({type(err).__name__})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file fails anywhere in the unpickler
        raise SenetError(
            f"{FIELD}: {path}: cannot be read as weights ({type(err).__name__}); it must be a torch.save file "
            "of tensors and plain containers (weights_only=True), e.g. torch.save(model.state_dict(), path)"
        ) from None
    return _unwrap(obj, str(path))


def _timm_state(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of `name` (downloaded into timm's cache the first time)."""
    _timm_version()
    import timm

    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as err:  # network, hub and cache failures arrive as many exception types
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise SenetError(
            f"{FIELD}: timm could not provide pretrained weights for {name} ({type(err).__name__}: {first}); "
            "fetch them once with network access, or give the weights file"
        ) from None
    return net.state_dict()


def read_weights(source: str) -> Converted:
    """The weights of `source` (a file or `timm:NAME`) in senet_core's names."""
    if is_timm(source):
        timm_network(source)
        state = _timm_state(source.removeprefix(TIMM))
    else:
        state = _read_file(_file(source))
    return convert(state)


def _classifier(model: nn.Module) -> tuple[str, nn.Linear] | None:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def weight_classes(converted: Converted, model: nn.Module) -> int | None:
    """How many classes the weights' classifier has (None when it cannot be told)."""
    found = _classifier(model)
    weight = converted.state.get(f"{found[0]}.weight") if found else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def architecture_notes(converted: Converted, source: str, name: str, options: Mapping[str, Any]) -> list[str]:
    """Where the configuration computes differently from the network the weights come from, in ways no tensor
    shape reveals (stem pool, stride layout; for `timm:NAME` every option of its table entry). The user may want
    that (fine-tuning an ablation), so these are notes, not errors."""
    info = model_info(name)
    effective = {**info.defaults(options), **options}
    expected = dict(converted.implied)
    if is_timm(source):
        expected.update(timm_network(source).options)
    notes = []
    for key, value in expected.items():
        if key in effective and key in info.options() and effective[key] != value:
            notes.append(f"{source}: the source network computes with {key}={value}, this model with {effective[key]}")
    return notes


def _load(model: nn.Module, converted: Converted, source: str) -> None:
    classes, head = weight_classes(converted, model), _classifier(model)
    if classes is not None and head is not None and classes != head[1].out_features:
        raise SenetError(
            f"model.num_classes: the weights in {source} classify {classes} classes, the model "
            f"{head[1].out_features}; set model.num_classes={classes} and use data with {classes} classes"
        )
    try:
        load_state(model, converted)
    except SenetError as err:
        raise SenetError(f"{FIELD}: {source}: {err}") from None


def load_weights(model: nn.Module, source: str, name: str, options: Mapping[str, Any]) -> list[str]:
    """Copy `source`'s weights into `model` (built as `build_model(name, options)`), strictly.

    Returns:
        notes on options that differ from the source network's (see `architecture_notes`).

    Raises:
        SenetError: unreadable source; a classifier with another number of classes (naming `model.num_classes`);
            the first missing key, unexpected key or shape mismatch.
    """
    converted = read_weights(source)
    _load(model, converted, source)
    return architecture_notes(converted, source, name, options)


@dataclass
class Imported:
    """A network built from imported weights, in eval mode on the CPU.

    Attributes:
        model: the network.
        name: registry name (`se_` prefix for SE nets).
        options: the user-facing options it was built with.
        weights: `model.weights` as given; identity: what a trial key records of it.
        notes: options that differ from the network the weights come from.
    """

    model: nn.Module
    name: str
    options: dict[str, Any]
    weights: str
    identity: str
    notes: list[str]


def import_model(name: str | None, options: Mapping[str, Any], source: str) -> Imported:
    """Build `name` with `options` and load `source` into it, for reading a trained network back (evaluation).

    With `timm:NAME` and no `name`, the configuration of NAME's table entry is used (`options` on top of it). An
    unset `model.num_classes` follows the weights' classifier. The network is built on the meta device and takes
    the loaded tensors, so nothing is initialised twice.

    Raises:
        SenetError: no model for a file, a bad option, or weights that do not fit (see `load_weights`).
    """
    opts = dict(options)
    if name is None:
        if not is_timm(source):
            raise SenetError(f"--model: required with a weights file ({source}); e.g. --model se_resnet50")
        entry = timm_network(source)
        name, opts = entry.model, {**entry.options, **opts}
    converted = read_weights(source)
    if "model.num_classes" not in opts:
        with torch.device("meta"):
            probe = build_model(name, opts)
        classes = weight_classes(converted, probe)
        if classes is not None:
            opts["model.num_classes"] = classes
    with torch.device("meta"):
        model = build_model(name, opts)
    _load(model, converted, source)
    notes = architecture_notes(converted, source, name, opts)
    return Imported(model.eval(), name, opts, source, weights_identity(source), notes)
