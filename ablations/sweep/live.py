"""Where a running trial stands between two heartbeats: its worker rewrites `runs/<key>/progress.json` about once a
second (epochs done, the current epoch's batches, the last validation error) and the sweep's progress bars on the
same host read it. The ledger keeps the durable progress (epochs, steps); this file is only for watching."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from ablations.training.steps import Progress

LIVE = "progress.json"
PERIOD_S = 1.0  # seconds between two writes of a running trial's progress file


@dataclass(frozen=True)
class Live:
    """A running trial's progress as its worker last wrote it."""

    epoch: int  # epochs done
    epochs: int  # epochs in all
    batch: int  # training batches of the current epoch done
    batches: int  # training batches in an epoch (0: not known yet)
    val_top1_err: float | None  # the last finished epoch's validation top-1 error (%)

    @property
    def done(self) -> float:
        """Epochs done, the current one's batches as a fraction."""
        part = self.batch / self.batches if self.batches and self.epoch < self.epochs else 0.0
        return min(self.epoch + part, float(self.epochs))


class LiveFile:
    """Rewrites `folder/progress.json` on a thread while a trial trains (only when something changed), and removes
    it when the trial ends, so a stale file never describes a trial that no longer runs."""

    def __init__(self, folder: Path, epochs: int, progress: Progress) -> None:
        self.path, self.epochs, self.progress = folder / LIVE, epochs, progress
        self.epoch, self.val_top1_err = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress-file")
        self._written: Live | None = None

    def __enter__(self) -> LiveFile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def epoch_done(self, epoch: int, val_top1_err: float) -> None:
        self.epoch, self.val_top1_err = epoch, val_top1_err

    def now(self) -> Live:
        p = self.progress
        batch = p.batch if p.batch < p.batches else 0  # an epoch whose batches are all done is counted in `epoch`
        return Live(self.epoch, self.epochs, batch, p.batches, self.val_top1_err)

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            live = self.now()
            if live == self._written:
                continue
            with contextlib.suppress(OSError):  # a full disk costs the bars their detail, never the trial
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(asdict(live)))
                os.replace(tmp, self.path)
                self._written = live


def read_live(folder: Path) -> Live | None:
    """The progress file of the trial in `folder`, or None (none written yet, ended, or unreadable)."""
    try:
        raw = json.loads((folder / LIVE).read_text())
        return Live(int(raw["epoch"]), int(raw["epochs"]), int(raw["batch"]), int(raw["batches"]),
                    None if raw["val_top1_err"] is None else float(raw["val_top1_err"]))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
