"""Atomic per-epoch checkpoints: a kill at any moment leaves either the old file or the new one, never half; one
this code cannot use is set aside beside it, never deleted."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ablations.errors import SenetError


class CheckpointError(SenetError):
    """A checkpoint exists but this code cannot resume from it (torn, refused, another network or run)."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to a temp file in the same folder, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True` (tensors and plain containers only, no code).

    Raises:
        CheckpointError: the file is truncated, corrupt, or not a checkpoint of this project.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn file fails anywhere in the unpickler (IndexError, KeyError, BadZipFile, ...)
        raise CheckpointError(f"{path}: checkpoint is unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path}: not a senet-ablate checkpoint (no model/epoch entries)")
    return state


def set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.unloadable-<UTC time>` beside it (a later one never replaces an earlier one), so a
    run can start over while the file stays for whoever wants to know what was in it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.unloadable-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unloadable-{stamp}-{n}")
    path.rename(aside)
    return aside
