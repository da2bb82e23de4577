"""How a run ends before its last epoch: the loss diverged, or a callback paused it mid-epoch (`Partial` is what
its checkpoint holds of the epoch under way, so that resuming gives the uninterrupted run's batches and sums)."""

from __future__ import annotations

from dataclasses import dataclass


class Diverged(Exception):
    """The training loss became NaN or infinite at `epoch` (1-based), `step` (0-based within it)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"loss is not finite at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


class Paused(Exception):
    """The run was checkpointed mid-epoch at a callback's request: `epoch` (1-based) resumes at its step `step`."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"paused at epoch {epoch}, step {step}, checkpointed")
        self.epoch, self.step = epoch, step


@dataclass
class Partial:
    """Where a paused epoch stood: its next step, and the sums and times of the steps before it."""

    epoch: int  # 0-based
    step: int  # the next step to train
    loss_sum: float
    correct: int
    seen: int
    skipped: int  # images of the set-up steps, left out of images/s
    elapsed_s: float
    compile_s: float


class _Pause(Exception):
    def __init__(self, partial: Partial) -> None:
        self.partial = partial
