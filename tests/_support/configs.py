"""The tiny configuration every harness test starts from, and study files built on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ablations.config import RunConfig, build_config

# ResNet-20 on 8×8 synthetic images of 3 classes, 128 training and 32 validation images, 2 epochs of 4 steps:
# about a second of CPU per trial.
TINY: dict[str, dict[str, Any]] = {
    "model": {"name": "resnet20"},
    "se": {"reduction": 4},
    "data": {"dataset": "synthetic", "val_size": 32, "synthetic_train": 160, "synthetic_test": 32,
             "synthetic_size": 8, "synthetic_classes": 3},
    "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 128},
}  # fmt: skip


def tiny_tree(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """TINY with some fields of some sections replaced, e.g. `tiny_tree(train={"epochs": 4})`."""
    tree = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return tree


def tiny_config(**sections: dict[str, Any]) -> RunConfig:
    return build_config(tiny_tree(**sections))


def write_spec(
    tmp_path: Path,
    name: str = "tiny",
    grid: dict[str, Any] | None = None,
    extra: list[dict[str, Any]] | None = None,
    seeds: Any = 2,
    **sections: dict[str, Any],
) -> Path:
    """A study file on the tiny configuration: by default the gate (sigmoid, tanh) × 2 seeds = 4 trials."""
    spec: dict[str, Any] = {
        "name": name,
        "description": "tiny synthetic study for tests",
        "base": tiny_tree(**sections),
        "grid": grid if grid is not None else {"se.excitation": ["sigmoid", "tanh"]},
        "seeds": seeds,
    }
    if extra is not None:
        spec["extra"] = extra
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
