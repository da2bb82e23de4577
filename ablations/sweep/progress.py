"""Rich progress bars of a sweep: its trials, and each running trial's epochs, read from the ledger."""

from __future__ import annotations

from typing import Any

from ablations.study.trials import Trial
from ablations.sweep.ledger import Attempt, State


class Progress:
    """The sweep's overall bar and one bar per running attempt of its trials; a no-op when disabled."""

    def __init__(self, enabled: bool, trials: list[Trial]) -> None:
        self.enabled = enabled
        self._tasks: dict[int, Any] = {}
        self._epochs = {t.key: t.config.train.epochs for t in trials}
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"), transient=False,
            )  # fmt: skip
            self.overall = self.bar.add_task("trials", total=len(trials), note="")

    def __enter__(self) -> Progress:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def show(self, done: int, attempts: list[Attempt], note: str = "") -> None:
        """`done` trials settled; one bar per RUNNING attempt in `attempts` (epochs done of epochs)."""
        if not self.enabled:
            return
        self.bar.update(self.overall, completed=done, note=note)
        running = {a.trial_id: a for a in attempts if a.state == State.RUNNING}
        for trial_id in set(self._tasks) - set(running):
            self.bar.remove_task(self._tasks.pop(trial_id))
        for trial_id, a in running.items():
            epochs = self._epochs.get(a.key, 1)
            if trial_id not in self._tasks:
                label = f"  {a.ticket.label} s{a.ticket.seed}" + (
                    f" (attempt {a.ticket.number})" if a.ticket.number > 1 else ""
                )
                self._tasks[trial_id] = self.bar.add_task(label, total=epochs, note="")
            host = a.owner.host if a.owner is not None and not a.owner.is_local() else ""
            self.bar.update(self._tasks[trial_id], completed=a.epoch, note=host)
