"""An attempt as the ledger holds it: its state, its owner, its progress and its ending; a trial's recorded
identity; and the exception a holder gets once its lease is gone."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ablations.outcomes import Ending
from ablations.sweep._ledger_owner import Owner
from ablations.sweep.ticket import Ticket


class LeaseLost(Exception):
    """This process's attempt was ended by someone else (it was judged dead); its writes are refused."""


class State(enum.IntEnum):
    """Where an attempt stands (stored by name). Numbered as Optuna's `TrialState`, an IntEnum too, so the two
    compare equal (also in sets and dicts) while callers move from `TrialState` to `State`."""

    RUNNING = 0  # leased to a worker
    COMPLETE = 1  # a result
    FAIL = 3  # ended without one
    WAITING = 4  # queued

    def is_finished(self) -> bool:
        return self in (State.COMPLETE, State.FAIL)


@dataclass(frozen=True)
class Attempt:
    """One attempt at one trial, as the ledger holds it (times are the database's clock, seconds since 1970).

    Attributes:
        trial_id: the attempt's id in the ledger (MLflow's `senet.attempt_id`).
        state: WAITING (queued), RUNNING (leased), COMPLETE (a result) or FAIL (ended without one).
        ticket: what it trains.
        owner: the lease holder once claimed.
        beat: heartbeats so far.
        epoch: epochs done (progress).
        run_id: its MLflow run.
        outcome: finished / diverged for a COMPLETE attempt.
        kind: how a FAIL attempt ended (see `ablations.outcomes`).
        reason: one line on why it failed.
        memory: peak device memory measured on a GPU ({"reserved_mb", "total_mb"}).
        token: the lease's fencing token, new at every claim; the holder's writes carry it.
        steps: training steps done.
        result: the summary metrics of a COMPLETE attempt.
        value: its final validation error (None when diverged).
    """

    trial_id: int
    state: State
    ticket: Ticket
    owner: Owner | None = None
    beat: int = 0
    epoch: int = 0
    run_id: str | None = None
    outcome: Ending | None = None
    kind: Ending | None = None
    reason: str = ""
    memory: dict[str, float] | None = None
    token: str | None = None
    steps: int = 0
    result: dict[str, Any] | None = None
    value: float | None = None
    queued_at: float | None = None
    claimed_at: float | None = None
    beat_at: float | None = None
    ended_at: float | None = None

    def __post_init__(self) -> None:  # the database holds the endings' strings
        for name in ("outcome", "kind"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Ending(getattr(self, name)))

    @property
    def key(self) -> str:
        return self.ticket.key

    @classmethod
    def from_row(cls, row: sa.Row[Any], ticket: Ticket) -> Attempt:
        return cls(row.id, State[row.state], ticket, Owner(**row.owner) if row.owner else None, row.beat, row.epoch,
                   row.run_id, row.outcome, row.kind, row.reason, row.memory, row.token, row.steps, row.result,
                   row.value, row.queued_at, row.claimed_at, row.beat_at, row.ended_at)  # fmt: skip


@dataclass(frozen=True)
class TrialRecord:
    """A trial's identity as the ledger records it: its key and what the key was made from."""

    key: str
    config_hash: str
    seed: int
    identity_version: int
