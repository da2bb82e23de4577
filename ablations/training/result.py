"""What one run produced, and its `result.json` beside the checkpoint (the ledger keeps a copy too)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ablations.paths import RESULT


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        status: `finished`, or `diverged` (a final result too: the configuration does not train).
        history: per-epoch metrics, epoch 1 first (restored epochs included after a resume).
        summary: final validation and test errors, best validation error and its epoch, cost and speed.
        resumed_from: epochs restored from a checkpoint (0 for a fresh run).
        diverged_epoch: the epoch whose loss became non-finite.
        notes: what a reader of the run should know (a resume, a discarded checkpoint, the divergence).
    """

    status: Literal["finished", "diverged"]
    history: list[dict[str, float]]
    summary: dict[str, float]
    resumed_from: int = 0
    diverged_epoch: int | None = None
    notes: list[str] = field(default_factory=list)


def write_result(result: RunResult, run_dir: Path) -> None:
    """`result.json` beside the checkpoint, written atomically (the sweep repairs MLflow from it)."""
    tmp = run_dir / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(asdict(result), indent=1, sort_keys=True))
    tmp.replace(run_dir / RESULT)


def read_result(run_dir: Path) -> RunResult | None:
    """The run's `result.json`, or None when it is missing or unreadable."""
    try:
        return RunResult(**json.loads((run_dir / RESULT).read_text()))
    except (OSError, ValueError, TypeError):
        return None
