"""A running attempt's heartbeat: renews its lease in the ledger with the training's progress, notices when the
lease was taken away, and ends the attempt `stalled` when the training stops making steps.

A trial blocked in a read (a hung network filesystem, a stuck device) would otherwise keep beating and hold its
lease forever. Progress is counted in batches (training steps and evaluation batches, `training.steps.Progress`);
the training has stalled when no batch was done for `STALL_STEPS` times the median time per batch seen so far, and
never sooner than `$SENET_ABLATE_STALL_S` (default 600 s: data loading, compiling and checkpoints do no batches).
A blocked thread cannot be interrupted, so the worker process ends the attempt and exits to be replaced.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

from ablations.outcomes import Ending
from ablations.paths import STALL_ENV, env_seconds
from ablations.sweep.ledger import Attempt, LeaseLost, Ledger
from ablations.training.steps import Progress

STALL_S = 600.0  # the least time without a batch before a trial counts as stalled
STALL_STEPS = 100  # ... or this many median batch times, when that is longer
_WINDOWS = 200  # recent per-batch times kept for the median


class HeartbeatDied(Exception):
    """The heartbeat thread failed: the lease is no longer renewed, so training must not go on under it."""


class Heartbeat:
    """Beats an attempt's lease every `period` seconds on a thread, with the batches done so far; keeps the error
    that killed it: `check` turns a lost lease or a dead heartbeat into an end of the attempt."""

    def __init__(
        self, ledger: Ledger, attempt: Attempt, period: float, progress: Progress, stalled: Callable[[str], None]
    ) -> None:
        self.ledger, self.attempt, self.period, self.progress = ledger, attempt, period, progress
        self.stalled = stalled  # called (on this thread) with the reason once the training has stalled
        self.floor = env_seconds(STALL_ENV, STALL_S)
        self.lost = threading.Event()
        self.died: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def check(self) -> None:
        """LeaseLost when the ledger took the lease away, HeartbeatDied (a crash) when the thread died."""
        if self.died is not None:
            err = self.died
            text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise HeartbeatDied(f"heartbeat failed ({type(err).__name__}: {text}); the lease was no longer renewed")
        if self.lost.is_set():
            raise LeaseLost

    def stall_after(self, per_batch: list[float]) -> float:
        """Seconds without a batch after which the training has stalled."""
        return max(self.floor, STALL_STEPS * statistics.median(per_batch)) if per_batch else self.floor

    def _run(self) -> None:
        done, since, per_batch, started = self.progress.steps, time.monotonic(), [], False
        while not self._stop.wait(self.period):
            now, steps = time.monotonic(), self.progress.steps
            if steps != done:
                if started:  # the time before the first batch (data, model, compiling) is no batch's time
                    per_batch = [*per_batch[-_WINDOWS:], (now - since) / (steps - done)]
                done, since, started = steps, now, True
            elif now - since > self.stall_after(per_batch):
                reason = f"no training step for {now - since:.0f} s (after {steps} batches); the worker is replaced"
                if self.ledger.fail(self.attempt, Ending.STALLED, reason):
                    self.stalled(reason)
                return
            try:
                self.ledger.heartbeat(self.attempt, steps=steps)  # the ledger itself rides out a short outage
            except LeaseLost:
                self.lost.set()
                return
            except Exception as err:  # a bug, or an outage past the ledger's retries: training must not go on unleased
                self.died = err
                print(f"heartbeat failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                return
