"""A study's outcome vocabulary: how an attempt ends, where a trial stands, a report cell's state and an MLflow
run's status, each one typed enum with its behaviour on it and stored as the same strings as ever.

| ending | what happened | retried? | run ends |
|---|---|---|---|
| finished, diverged | a result (the ledger's COMPLETE); a diverged run is a result too | no | FINISHED |
| oom | out of device memory | counts toward `--max-retries`; the next attempt runs alone on its GPU | FAILED |
| crash | any other error in training, or the worker process died | counts toward `--max-retries` | FAILED |
| config | a configuration this host cannot run (missing data, a device it lacks) | never: one line, exit 1 | FAILED |
| stopped | stopped by us (Ctrl-C or SIGTERM to the sweep) | does not count | KILLED |
| lost | the worker stopped beating (its host died, or it was paused past the grace) | counts as a loss | KILLED |
| stalled | its training made no step for too long (blocked in I/O, a hung device) | counts as a loss | KILLED |

A trial lost or stalled `LOSS_LIMIT` times is failed: it kills, freezes or hangs whatever host trains it.
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A member is its string everywhere text is made (`str`, f-strings, JSON), so nothing stored changes."""

    def __str__(self) -> str:
        return str(self.value)


class RunStatus(_Word):
    """An MLflow run's status, spelled as MLflow spells it."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Ending(_Word):
    """How one attempt at a trial ended (the `outcome` of a COMPLETE attempt, the `kind` of a FAIL one)."""

    FINISHED = "finished"
    DIVERGED = "diverged"
    OOM = "oom"
    CRASH = "crash"
    CONFIG = "config"
    STOPPED = "stopped"
    LOST = "lost"
    STALLED = "stalled"

    @property
    def result(self) -> bool:
        """The attempt produced a result (the ledger's COMPLETE)."""
        return self in (Ending.FINISHED, Ending.DIVERGED)

    @property
    def uses_retry(self) -> bool:
        """A failure of the trial that counts toward `--max-retries`."""
        return self in (Ending.OOM, Ending.CRASH)

    @property
    def final(self) -> bool:
        """A failure that ends the trial at once, whatever retries are left."""
        return self is Ending.CONFIG

    @property
    def host_loss(self) -> bool:
        """The attempt's host lost it (died, froze, paused past the grace) or its training hung: counts toward the
        trial's own limit of losses, never toward `--max-retries`."""
        return self in (Ending.LOST, Ending.STALLED)

    @property
    def failure(self) -> bool:
        """A failure of the trial itself (not of its host, not a stop by us)."""
        return self.uses_retry or self.final

    @property
    def run_status(self) -> RunStatus:
        """How the attempt's MLflow run ends: KILLED when stopped or lost (the trial goes on in another attempt)."""
        if self.result:
            return RunStatus.FINISHED
        return RunStatus.FAILED if self.failure else RunStatus.KILLED


class Standing(_Word):
    """Where a trial stands, from its attempts in the ledger and the retry budget."""

    DONE = "done"
    RUNNING = "running"
    FAILED = "failed"
    PENDING = "pending"  # queued, or not queued yet

    @property
    def settled(self) -> bool:
        """Nothing more happens to the trial in this sweep."""
        return self in (Standing.DONE, Standing.FAILED)


class CellState(_Word):
    """A report cell's state, in the order reports count them: a FINISHED run's outcome, else the ledger's word."""

    FINISHED = "finished"
    DIVERGED = "diverged"
    FAILED = "failed"
    RUNNING = "running"
    PENDING = "pending"
