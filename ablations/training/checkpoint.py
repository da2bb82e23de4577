"""Atomic per-epoch checkpoints: a kill at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ablations.errors import SenetError


class CheckpointError(SenetError):
    """A checkpoint exists but cannot be read."""


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
        raise CheckpointError(
            f"{path}: checkpoint is unreadable ({type(err).__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path}: not a senet-ablate checkpoint (no model/epoch entries)")
    return state
