"""The resolved configuration of one training run: model, SE, data, recipe and seed, validated once.

Everything downstream (trainer, sweep ledger, MLflow params, reports) reads this object. Its identity
(`config_hash`) holds everything that changes the result and nothing that does not, so identical trials of
different studies train once and a field added later at its default leaves every earlier key as it was;
`seed` is kept apart, as the second half of a trial's identity.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablations.datafiles import PACKAGED, digest
from ablations.errors import SenetError
from ablations.weights import weights_identity
from senet_core import (
    SE_OFF,
    Excitation,
    Placement,
    Rounding,
    SEConfig,
    Shortcut,
    Squeeze,
    StemPool,
    StrideLayout,
    list_models,
    model_info,
    parse_reduction,
    resolve,
)

_SE = SEConfig()  # the library's standard SE block: the defaults of `se.*`
# Bumped on purpose when the meaning of a configuration changes (a default, a field's semantics), which makes
# every trial key new. Version 1 hashed the raw dump; version 2 resolves `auto` settings and drops defaults;
# version 3 adds the digest of a packaged dataset's files (`data.files`); version 4 draws each module's initial
# weights keyed by the seed and its name (`senet_core.init_by_name`: common random numbers), the same fields.
IDENTITY_VERSION = 4
# The earlier versions `identity()` still computes, newest first, with what the next one changed: a trial knows its
# keys under them, so results made before a bump stay findable and are shown as such, never as the current trial's.
EARLIER_IDENTITIES = {3: "before common random numbers", 2: "before the data digest"}
# Fields that never change a result: where files are, how many loader processes read them, how big the
# evaluation batches are (the same sums, in another grouping).
_BOOKKEEPING = {"data": ("download", "workers"), "train": ("eval_batch_size",)}
# Schedule settings that only one schedule reads; under another they are left out of the identity.
_SCHEDULE_FIELDS = {"milestones": ("multistep",), "gamma": ("multistep", "plateau"),
                    "plateau_patience": ("plateau",), "plateau_max_drops": ("plateau",)}  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """`model.*`: the backbone and its structural options (None = the backbone's default)."""

    name: str = "resnet20"  # registry name of the backbone, without the se_ prefix
    stride_layout: StrideLayout | None = None  # bottleneck nets only
    stem_pool: StemPool | None = None  # ImageNet nets only; None = caffe for the original layout, else torchvision
    shortcut: Shortcut | None = None  # CIFAR nets only
    zero_init: bool = False  # zero the last BN gamma of every residual branch
    in_channels: int | None = Field(None, ge=1)  # None = the dataset's channels
    num_classes: int | None = Field(None, ge=1)  # None = the dataset's classes
    weights: str | None = None  # initial weights: a .pth / .safetensors file or timm:NAME (ablations.weights)


class SESection(_Section):
    """`se.*`: the SE design factors the paper ablates (see senet_core.SEConfig, whose defaults these are)."""

    enabled: bool = _SE.enabled
    # r: channels per hidden unit of the first FC, for every stage or per stage ({2: 8, 3: 16, 4: off})
    reduction: int | dict[int, int | None] = _SE.reduction
    squeeze: Squeeze = _SE.squeeze
    excitation: Excitation = _SE.excitation
    placement: Placement = _SE.placement
    stages: list[int] | None = None  # None = every residual stage
    bias: bool = _SE.bias  # FC biases; the paper's ablations removed them
    rounding: Rounding = _SE.rounding

    @field_validator("reduction", mode="before")
    @classmethod
    def _reduction(cls, value: Any) -> Any:
        parsed = parse_reduction(value)  # SenetError: one line naming the stage and what is allowed
        return parsed if isinstance(parsed, int) else dict(parsed)


Dataset = Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]


class DatasetShape(NamedTuple):
    """A packaged dataset as its files hold it: the shape the model sees and the images of each file."""

    channels: int
    size: int  # pixels, side of an image
    classes: int
    train: int  # images of the training file, before the validation split
    test: int  # images of the test file


# The files' datasets, known without reading them. `synthetic` takes its shape and sizes from `data.synthetic_*`,
# `imagefolder` its shape from `data.image_size` and its class folders, its sizes from the files it finds.
DATASETS: dict[str, DatasetShape] = {
    "fashion_mnist": DatasetShape(1, 28, 10, 60_000, 10_000),
    "cifar10": DatasetShape(3, 32, 10, 50_000, 10_000),
    "cifar100": DatasetShape(3, 32, 100, 50_000, 10_000),
}


class DataSection(_Section):
    """Which dataset to load and how to split, subsample and augment it; user-facing names are `data.<field>`.

    Sizes the configuration alone can refuse are constraints here; those that depend on the dataset's size are
    `check_sizes`' (from the config for the packaged and synthetic datasets) and the loader's (image folders).
    """

    dataset: Dataset = "fashion_mnist"
    root: str | None = None  # data folder; None = the dataset's default location
    val_size: int = Field(5000, ge=1)  # images held out of the training set for validation (He et al. 2016: 45k/5k)
    data_seed: int = 0  # fixes the validation split, the subsets and the synthetic images
    train_subset: int | None = Field(None, ge=1)  # training images kept after the split; None = all
    val_subset: int | None = Field(None, ge=1)  # validation images kept; None = all
    test_subset: int | None = Field(None, ge=1)  # test images kept (a seeded random choice); None = all, in file order
    augment: bool = True  # pad-4 random crop + horizontal flip on the train split (imagefolder: random resized crop)
    download: bool = False  # let torchvision fetch a missing dataset (fashion_mnist, cifar10, cifar100)
    image_size: int = Field(224, ge=1)  # pixels, side of the ImageFolder crop
    workers: int = Field(4, ge=0)  # ImageFolder DataLoader worker processes
    synthetic_classes: int = Field(10, ge=2)  # classes
    synthetic_size: int = Field(32, ge=1)  # pixels, side of a synthetic image
    synthetic_channels: int = Field(3, ge=1)  # channels
    synthetic_train: int = Field(512, ge=2)  # images in the training set, before the validation split
    synthetic_test: int = Field(256, ge=1)  # images in the test set


def check_split(data: DataSection, n_train: int, n_test: int) -> None:
    """Raise SenetError unless `data`'s validation hold-out and subsets fit `n_train` training and `n_test` test
    images (the loader's check on the files it read, and `check_sizes`' on the sizes known beforehand)."""
    if not data.val_size < n_train:
        raise SenetError(
            f"data.val_size: {data.val_size} is not allowed; allowed: 1..{n_train - 1} "
            f"(the {data.dataset} training set has {n_train} images)"
        )
    held = f"the {data.dataset} training set has {n_train} images, {data.val_size} of them validate"
    for name, n, why in (("train_subset", n_train - data.val_size, held), ("val_subset", data.val_size, held),
                         ("test_subset", n_test, f"the {data.dataset} test set has {n_test} images")):  # fmt: skip
        value = getattr(data, name)
        if value is not None and value > n:
            raise SenetError(f"data.{name}: {value} is not allowed; allowed: 1..{n} or null for all ({why})")


def check_sizes(data: DataSection) -> None:
    """Raise SenetError now for a split or subset the dataset cannot hold, where its sizes are known without
    reading it (the packaged datasets, synthetic data): a sweep refuses it before anything is written. Image
    folders are counted when they are scanned."""
    if data.dataset == "synthetic":
        check_split(data, data.synthetic_train, data.synthetic_test)
    elif data.dataset in DATASETS:
        check_split(data, DATASETS[data.dataset].train, DATASETS[data.dataset].test)


# off: eager; graphs: eager network, the whole training step captured as one CUDA graph (CUDA only, no compile
# time); the others are torch.compile modes (reduce-overhead adds CUDA graphs to the compiled network).
Compile = Literal["off", "graphs", "default", "reduce-overhead", "max-autotune"]


class TrainSection(_Section):
    """`train.*`: the optimisation recipe; every quantity with its unit."""

    epochs: int = Field(3, ge=1, le=100_000)  # passes over the training split
    batch_size: int = Field(128, ge=1)  # images per optimizer step
    eval_batch_size: int = Field(512, ge=1)  # images per evaluation batch
    lr: float = Field(0.1, gt=0)  # peak learning rate, for `batch_size` images per step
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)  # L2 coefficient, applied to every parameter (He et al.)
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from 0 to `lr`, in epochs
    schedule: Literal["multistep", "cosine", "plateau", "constant"] = "cosine"
    milestones: list[float] = [0.5, 0.75]  # multistep: fractions of `epochs` where lr is multiplied by `gamma`
    gamma: float = Field(0.1, gt=0, le=1)  # multistep / plateau lr factor
    plateau_patience: int = Field(5, ge=0)  # plateau: epochs without a better validation loss before a drop
    plateau_max_drops: int = Field(3, ge=0)  # plateau: drops at most (the paper: three)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when the host has it
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on the CPU
    channels_last: bool | None = None  # None = on (faster for these convs on CUDA and on oneDNN CPUs alike)
    compile: Compile = "off"  # graphs (CUDA graphs of the eager step) or a torch.compile mode
    drop_last: bool | None = None  # skip the last short training batch; None = under graphs, compile or devices > 1
    # Devices one trial trains on as one DDP group (README, "ImageNet-scale trials"): `batch_size` stays the images
    # of one optimizer step, split evenly over them; part of the trial key, since BN normalises each device's part.
    devices: int = Field(1, ge=1, le=4096)

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Any:
        return {True: "default", False: "off"}.get(value, value) if isinstance(value, bool) else value


def check_graphs(train: TrainSection) -> None:
    """Raise SenetError when a resolved `train` captures CUDA graphs (`compile: graphs`) on a device without them."""
    if train.compile == "graphs" and train.device != "cuda":
        raise SenetError(
            f"train.compile: 'graphs' captures CUDA graphs and needs a GPU, but train.device is {train.device!r} "
            "here; allowed on the CPU: off, default, reduce-overhead, max-autotune"
        )


def check_devices(train: TrainSection) -> None:
    """Raise SenetError when `train.devices` cannot split `train` evenly, or asks for what a group cannot do."""
    n = train.devices
    if n == 1:
        return
    if train.batch_size % n:
        allowed = ", ".join(str(b) for b in range(n, 4 * n + 1, n))
        raise SenetError(f"train.batch_size: {train.batch_size} does not split over train.devices = {n}; allowed: a "
                         f"multiple of {n} ({allowed}, ...)")  # fmt: skip
    if train.compile == "graphs":
        raise SenetError(f"train.compile: 'graphs' is not allowed with train.devices = {n} (a captured graph "
                         "cannot hold the group's gradient all-reduce); allowed: off, default, reduce-overhead, "
                         "max-autotune")  # fmt: skip
    if train.drop_last is False:
        raise SenetError(f"train.drop_last: false is not allowed with train.devices = {n} (a short last batch does "
                         "not split evenly); allowed: true, null")  # fmt: skip


@dataclass(frozen=True)
class Host:
    """What a trial's `auto` settings resolve to: the kind of device that will train it."""

    device: Literal["cpu", "cuda"]

    @classmethod
    def here(cls) -> Host:
        """This process's host: CUDA when a device is visible."""
        return cls("cuda" if torch.cuda.is_available() else "cpu")


class RunConfig(_Section):
    """One trial: the whole resolved configuration plus its seed."""

    model: ModelSection = ModelSection()
    se: SESection = SESection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    seed: int = Field(0, ge=0)  # model init, data order and augmentation

    def model_options(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """User-facing `build_model` options; the dataset fills channels and classes the config leaves open."""
        opts: dict[str, Any] = {f"se.{k}": v for k, v in self.se.model_dump().items()}
        m = self.model
        if m.name not in list_models():
            return opts
        for key in ("stride_layout", "stem_pool", "shortcut"):
            if getattr(m, key) is not None:
                opts[f"model.{key}"] = getattr(m, key)
        if m.zero_init or "model.zero_init" in model_info(m.name).defaults():
            opts["model.zero_init"] = m.zero_init  # an error for backbones without residual branches
        opts["model.in_channels"] = m.in_channels or in_channels
        opts["model.num_classes"] = m.num_classes or num_classes
        return opts

    def check_model(self) -> None:
        """Raise SenetError now for a model/SE combination the backbone cannot build (before anything runs)."""
        resolve(self.model.name, self.model_options(1, 2))

    def resolved(self, host: Host | None = None) -> RunConfig:
        """The configuration with every `auto` setting decided for `host` (default: this one), as it will run.

        A resolved configuration is what a trial records and hashes: a CPU fp32 run and a GPU bf16 run of the
        same spec are different trials.
        """
        t = self.train
        device = t.device if t.device != "auto" else (host or Host.here()).device
        precision = t.precision if t.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
        # channels_last trained ResNet-20 1.5x faster on the 2-core AVX2 CPU too (612 vs 408 images/s, torch 2.14)
        channels_last = True if t.channels_last is None else t.channels_last
        drop_last = (t.compile != "off" or t.devices > 1) if t.drop_last is None else t.drop_last
        train = t.model_copy(
            update={"device": device, "precision": precision, "channels_last": channels_last, "drop_last": drop_last}
        )
        return self.model_copy(update={"train": train})

    def identity(self, version: int = IDENTITY_VERSION) -> dict[str, Any]:
        """Everything that changes the result, spelled one way (seed excluded), as identity `version` spelled it
        (the current one, or one of EARLIER_IDENTITIES).

        `auto` settings are resolved for this host unless already resolved; SE fields of a disabled SE and the
        backbone's defaults are normalised; bookkeeping fields and other schedules' settings are left out; a
        leaf equal to its declared default is left out, so adding a field with a default keeps every key; the
        packaged datasets are identified by the SHA-256 of their files (`data.files`, from version 3: the data, not
        the path), an image folder by its absolute path (hashing an ImageNet-sized folder for a key is not
        practical); initial weights by the SHA-256 of their file (or `timm:NAME@<timm version>`).

        Raises:
            SenetError: the packaged dataset's files are missing (`ablations.datafiles.MissingData`), or weights.
        """
        if version != IDENTITY_VERSION and version not in EARLIER_IDENTITIES:
            raise ValueError(f"identity version {version} is not computable; known: {IDENTITY_VERSION}, "
                             f"{', '.join(map(str, EARLIER_IDENTITIES))}")  # fmt: skip
        cfg = self.resolved()
        options = cfg.model_options(1, 2)
        info, se, _ = resolve(cfg.model.name, options)
        tree = cfg.model_dump(exclude={"seed"})
        if cfg.model.weights is not None:  # the file's content, not its path (or the timm name and version)
            tree["model"]["weights"] = weights_identity(cfg.model.weights)
        for key, default in info.defaults(options).items():
            section, name = key.split(".")
            if section == "model" and tree["model"].get(name) is None:
                tree["model"][name] = default
        tree["se"] = {f: getattr(se if se.enabled else SE_OFF, f) for f in tree["se"]}
        tree["se"]["stages"] = list(se.stages) if se.stages is not None else None
        if not isinstance(se.reduction, int):  # per stage, spelled as the network it builds (`resolve`)
            tree["se"]["reduction"] = {str(stage): r for stage, r in se.reduction}
        for section, names in _BOOKKEEPING.items():
            for name in names:
                tree[section].pop(name)
        data = tree["data"]
        data["root"] = os.path.realpath(data["root"]) if data["dataset"] == "imagefolder" and data["root"] else None
        if version >= 3 and data["dataset"] in PACKAGED:
            data["files"] = digest(cfg.data)
        for name, schedules in _SCHEDULE_FIELDS.items():
            if tree["train"]["schedule"] not in schedules:
                tree["train"].pop(name)
        defaults = type(self)().model_dump(exclude={"seed"})
        return {"version": version} | {
            section: {k: v for k, v in fields.items() if k not in defaults[section] or v != defaults[section][k]}
            for section, fields in tree.items()
        }

    def config_hash(self, version: int = IDENTITY_VERSION) -> str:
        """12 hex digits of SHA-256 over `identity(version)`."""
        blob = json.dumps(self.identity(version), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values, e.g. {"se.reduction": 16, ...}, for MLflow params and tables."""
        return flatten(self.model_dump())


# Fields whose value is itself a map (stage -> r): a leaf for `flatten`, never more dotted keys.
MAP_FIELDS = frozenset({"se.reduction"})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections → dotted keys (`se: {reduction: 8}` → `se.reduction`); a map field stays one value."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in MAP_FIELDS:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SenetError(f"{key}: {p} is a value, not a section")
        node[leaf] = value
    return tree


def shorten(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, so a message never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """`; did you mean X?` naming the closest of `allowed` to a mistyped `word` (difflib), or nothing."""
    close = difflib.get_close_matches(word, list(allowed), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def validation_message(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """pydantic's first error as one line naming the dotted field path and what is allowed; an unknown key of
    `model` (the model validated, e.g. RunConfig) with the closest field of its section."""
    e = err.errors()[0]
    path = prefix + ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key{_closest_field(e['loc'], model, prefix)}"
    if e["type"] == "value_error" and isinstance(e.get("ctx", {}).get("error"), SenetError):
        return str(e["ctx"]["error"])  # a validator's own one line (it names the field)
    if e["type"] == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        return f"{path}: {shorten(e['input'])} is not allowed; allowed: {expected.replace(' or ', ', ')}"
    return f"{path}: {e['msg']} (got {shorten(e['input'])})"


def _closest_field(loc: tuple[int | str, ...], model: type[BaseModel] | None, prefix: str) -> str:
    """`did_you_mean` for the unknown field at `loc`, among the fields of the section of `model` it sits in."""
    for part in loc[:-1]:
        info = model.model_fields.get(str(part)) if model is not None else None
        kind = info.annotation if info is not None else None
        model = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    if model is None:
        return ""
    parent = prefix + "".join(f"{p}." for p in loc[:-1])
    return did_you_mean(f"{parent}{loc[-1]}", [parent + name for name in model.model_fields])


def build_config(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, or raise SenetError naming the field and what is allowed."""
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise SenetError(validation_message(err, model=RunConfig)) from None
    if cfg.model.name not in list_models():
        allowed = ", ".join(list_models())
        raise SenetError(f"model.name: {cfg.model.name!r} is not a backbone (SE lives in se.*); allowed: {allowed}")
    cfg.check_model()
    check_devices(cfg.train)
    return cfg
