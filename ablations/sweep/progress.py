"""What a sweep shows while it runs, read from the ledger: a start banner and a line per trial that ends, in a terminal
or a log file alike (piped, under `nohup`, in a Slurm log); on a terminal also rich bars of the trials and of each
running trial's epoch (its batches, the last validation error, an ETA), from its worker's progress file."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ablations.outcomes import Ending, Standing
from ablations.paths import RESULTS, run_dir
from ablations.study.trials import Trial
from ablations.sweep.ledger import Attempt, State
from ablations.sweep.live import read_live


def took(seconds: float) -> str:
    """A duration as people read it: 42s, 3m05s, 2h07m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def ended_line(a: Attempt, retries_left: bool) -> str:
    """One line for an attempt that just ended: its errors and time, or how it failed and what happens next."""
    t = a.ticket
    name = f"{t.label} seed {t.seed}" + (f" (attempt {t.number})" if t.number > 1 else "")
    timed = a.ended_at is not None and a.claimed_at is not None
    spent = f" in {took(a.ended_at - a.claimed_at)}" if timed else ""  # type: ignore[operator]
    if a.state == State.COMPLETE:
        r = a.result.get("summary", {}) if a.result else {}
        if a.outcome == Ending.DIVERGED:
            return f"diverged {name} at epoch {r.get('diverged_epoch', '?')}{spent}"
        return (f"done     {name}: test top-1 err {r.get('test_top1_err', float('nan')):.2f}%, val "
                f"{r.get('final_val_top1_err', float('nan')):.2f}%{spent}")  # fmt: skip
    then = "resumes next time" if a.kind == Ending.STOPPED else "queued again" if retries_left else "out of retries"
    after = spent.replace(" in ", " after ")
    return f"{'stopped' if a.kind == Ending.STOPPED else 'failed':8s} {name}{after}: {a.kind}: {a.reason}; {then}"


class Progress:
    """The sweep's lines (always) and its bars (`bars`: on a terminal): `show` after every pass of the controller."""

    def __init__(self, bars: bool, trials: list[Trial], results: Path) -> None:
        self.bars = bars
        self.results = results
        self._tasks: dict[int, Any] = {}
        self._epochs = {t.key: t.config.train.epochs for t in trials}
        self._total = len(trials)
        self._seen: set[int] | None = None  # attempts ended before the first pass are not news
        self.began = time.monotonic()
        if bars:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"), transient=False, console=Console(stderr=True),
            )  # fmt: skip
            self.overall = self.bar.add_task("trials", total=len(trials), note="")

    def __enter__(self) -> Progress:
        if self.bars:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars:
            self.bar.__exit__(*exc)

    def say(self, text: str) -> None:
        """A line above the bars on a terminal, else on stderr, flushed at once."""
        if self.bars:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def show(self, done: int, attempts: list[Attempt], retries_left: dict[str, bool], note: str = "") -> None:
        """`done` trials settled; a line per attempt in `attempts` that ended since the last pass (`retries_left`:
        by trial key, whether a failed one is queued again); one bar per RUNNING attempt."""
        ended = {a.trial_id: a for a in attempts if a.state in (State.COMPLETE, State.FAIL)}
        if self._seen is None:
            self._seen = set(ended)
        for trial_id in sorted(set(ended) - self._seen, key=lambda i: ended[i].ended_at or 0.0):
            a = ended[trial_id]
            self.say(f"[{done}/{self._total}] {ended_line(a, retries_left.get(a.key, False))}")
            self._seen.add(trial_id)
        if self.bars:
            self._draw(done, attempts, note)

    def _draw(self, done: int, attempts: list[Attempt], note: str) -> None:
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
            local = a.owner is None or a.owner.is_local()
            live = read_live(run_dir(self.results, a.key)) if local else None
            where = "" if local else f"on {a.owner.host}"  # type: ignore[union-attr]
            if live is None:
                self.bar.update(self._tasks[trial_id], completed=a.epoch, note=where)
                continue
            parts = [f"epoch {min(live.epoch + 1, epochs)}/{epochs}"]
            if live.batches and live.epoch < epochs:
                parts.append(f"batch {live.batch}/{live.batches}")
            if live.val_top1_err is not None:
                parts.append(f"val err {live.val_top1_err:.2f}%")
            self.bar.update(self._tasks[trial_id], completed=live.done, note=" · ".join(parts))

    def closing(self, study: str, counts: dict[Standing, int]) -> None:
        """The sweep's last lines: where its trials stand, how long it ran, and the commands that come next."""
        stand = ", ".join(f"{counts[state]} {state}" for state in Standing if counts.get(state))
        self.say(f"sweep {study}: {stand or 'no trials'} after {took(time.monotonic() - self.began)}")
        where = "" if self.results == RESULTS else f" --results {shlex.quote(str(self.results))}"
        name = shlex.quote(study)
        self.say(f"next: senet-ablate status {name}{where} · senet-ablate report {name}{where} · "
                 f"senet-ablate ui{where}")  # fmt: skip
