"""The resolved configuration of one training run: model, SE, data, recipe and seed, validated once.

Everything downstream (trainer, sweep ledger, MLflow params, reports) reads this object. Its `config_hash`
identifies a trial with everything that changes the result, so identical trials in different studies are
trained once; `seed` is kept apart, as the second half of a trial's identity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ablations.data import DataConfig
from ablations.errors import SenetError
from senet_core import SE_OFF, Complexity, build_model, list_models, measure, model_info, resolve


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """`model.*`: the backbone and its structural options (None = the backbone's default)."""

    name: str = "resnet20"  # registry name of the backbone, without the se_ prefix
    stride_layout: Literal["original", "v1.5"] | None = None  # bottleneck nets only
    shortcut: Literal["A", "B"] | None = None  # CIFAR nets only
    zero_init: bool = False  # zero the last BN gamma of every residual branch
    in_channels: int | None = Field(None, ge=1)  # None = the dataset's channels
    num_classes: int | None = Field(None, ge=1)  # None = the dataset's classes


class SESection(_Section):
    """`se.*`: the SE design factors the paper ablates (see senet_core.SEConfig)."""

    enabled: bool = True
    reduction: int = Field(16, ge=1)  # r
    squeeze: Literal["avg", "max", "none"] = "avg"
    excitation: Literal["sigmoid", "tanh", "relu"] = "sigmoid"
    placement: Literal["standard", "pre", "post", "identity", "inner"] = "standard"
    stages: list[int] | None = None  # None = every residual stage
    bias: bool = True  # FC biases; the paper's ablations removed them
    rounding: Literal["floor", "divisible8"] = "floor"


class TrainSection(_Section):
    """`train.*`: the optimisation recipe; every quantity with its unit."""

    epochs: int = Field(3, ge=1)  # passes over the training split
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
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when present
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None = on for CUDA
    compile: bool = False  # torch.compile the model (CUDA)


class RunConfig(_Section):
    """One trial: the whole resolved configuration plus its seed."""

    model: ModelSection = ModelSection()
    se: SESection = SESection()
    data: DataConfig = DataConfig()
    train: TrainSection = TrainSection()
    seed: int = 0  # model init, data order and augmentation

    def model_options(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """User-facing `build_model` options; the dataset fills channels and classes the config leaves open."""
        opts: dict[str, Any] = {f"se.{k}": v for k, v in self.se.model_dump().items()}
        m = self.model
        if m.name not in list_models():
            return opts
        for key in ("stride_layout", "shortcut"):
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

    def canonical(self) -> dict[str, Any]:
        """Everything that changes the result, spelled one way: SE fields of a disabled SE and the backbone's
        defaults are normalised, and bookkeeping (paths, worker counts, download) is left out."""
        info, se, _ = resolve(self.model.name, self.model_options(1, 2))
        out = self.model_dump(exclude={"seed"})
        for key, default in info.defaults().items():
            section, field = key.split(".")
            if section == "model" and out["model"].get(field) is None:
                out["model"][field] = default
        out["se"] = {f: getattr(se if se.enabled else SE_OFF, f) for f in out["se"]}
        out["se"]["stages"] = list(se.stages) if se.stages is not None else None
        for field in ("root", "download", "workers"):
            out["data"].pop(field)
        return out

    def config_hash(self) -> str:
        """12 hex digits of SHA-256 over the canonical configuration (seed excluded)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values, e.g. {"se.reduction": 16, ...}, for MLflow params and tables."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
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


def validation_message(err: ValidationError, prefix: str = "") -> str:
    """pydantic's first error as one line naming the dotted field path and what is allowed."""
    e = err.errors()[0]
    path = prefix + ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    if e["type"] == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        return f"{path}: {e['input']!r} is not allowed; allowed: {expected.replace(' or ', ', ')}"
    return f"{path}: {e['msg']} (got {e['input']!r})"


def build_config(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, or raise SenetError naming the field and what is allowed."""
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise SenetError(validation_message(err)) from None
    if cfg.model.name not in list_models():
        allowed = ", ".join(list_models())
        raise SenetError(f"model.name: {cfg.model.name!r} is not a backbone (SE lives in se.*); allowed: {allowed}")
    cfg.check_model()
    return cfg


_COSTS: dict[str, Complexity] = {}


def input_shape(config: RunConfig) -> tuple[int, int, int]:
    """(in_channels, image side in pixels, classes) the model sees, from the config alone (no data is read).

    ImageFolder's class count comes from its folders; without `model.num_classes` the backbone's default is used.
    """
    data = config.data
    channels, size, classes = {
        "fashion_mnist": (1, 28, 10),
        "cifar10": (3, 32, 10),
        "cifar100": (3, 32, 100),
        "synthetic": (data.synthetic_channels, data.synthetic_size, data.synthetic_classes),
        "imagefolder": (3, data.image_size, model_info(config.model.name).defaults().get("model.num_classes", 1000)),
    }[data.dataset]
    return config.model.in_channels or channels, size, config.model.num_classes or classes


def cost(config: RunConfig) -> Complexity:
    """Params and multiply-adds of the trial's network at its data's image size (built on `meta`, cached)."""
    digest = config.config_hash()
    if digest not in _COSTS:
        channels, size, classes = input_shape(config)
        with torch.device("meta"):
            model = build_model(config.model.name, config.model_options(channels, classes))
            _COSTS[digest] = measure(model, size, channels)
    return _COSTS[digest]
