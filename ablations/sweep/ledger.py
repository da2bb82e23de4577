"""The sweep ledger: every attempt at every trial in a small database of its own, the single source of truth of a
sweep.

One row per *attempt* (table `senet_attempts`, schema in `_ledger_db`); queues are by trial key, not by study, so a
trial shared by two studies never waits in the other study's queue. The backends: a SQLite file for one host
(default `results/ledger.db`: WAL, write transactions BEGIN IMMEDIATE, refused on a network filesystem) and
PostgreSQL for many.

Exactly once comes from transactions and constraints, not locks:

- every transition is one transaction with a conditional write, and the constraints refuse what must never be:
  at most one live (WAITING or RUNNING) attempt per trial, at most one COMPLETE attempt per trial, one row per
  (key, attempt number). Any number of reconcilers may run at once; there is no lock to lose.
- an attempt is a lease. `claim` takes a WAITING attempt (`FOR UPDATE SKIP LOCKED` on PostgreSQL) only while
  its trial has nothing running or complete, and gives it a new random fencing token; `heartbeat`, `update`,
  `complete` and `fail` change only the row with that id and token in state RUNNING, else `LeaseLost`.
- a write whose COMMIT reply was lost is retried, and the retry recognises its own first try instead of doing it
  twice or calling it a lost lease: enqueue by the (key, number) it inserted, claim by its token, an end by the
  random `end_id` it wrote, `set_run_id` by the run id it set.
- leases are judged by the database's clock in the same statement that ends them (`expire`), so a stalled or
  paused observer cannot end a lease that is being renewed. Liveness settings live in the ledger (`meta`).
- the result (summary metrics, run id) lives in the attempt's row, so any host can make MLflow follow it; the run
  id is set by a conditional write, so concurrent repairs converge on one run.
- a database outage is waited out for `RETRY_S`, then raises `StoreUnavailable` (a harness condition, never the
  user's error); opening a ledger turns it into the one-line `SenetError` of a command that cannot start.

The schema has a version and numbered migration steps, applied in place when a ledger is opened. A results folder
with the Optuna journal of senet-ablate 0.2 (`ledger.journal`) and no `ledger.db` has it imported once under its
recorded keys and ids; the journal is kept as `ledger.journal.imported`.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from ablations.errors import StoreUnavailable
from ablations.outcomes import Ending
from ablations.paths import check_key
from ablations.sweep import _ledger_db as db
from ablations.sweep._ledger_attempts import Attempt, LeaseLost, State, TrialRecord
from ablations.sweep._ledger_owner import Liveness, Owner, host_id, pid_alive, process_start, slurm_job
from ablations.sweep._ledger_retry import (
    CONNECT_S,
    RETRY_S,
    check_storage,
    is_local,
    journal_of,
    local_file,
    retry_window,
    retrying,
)
from ablations.sweep._ledger_store import Store, close_all
from ablations.sweep.ticket import Ticket

__all__ = [  # what the harness imports from here; the ledger's parts live in its private modules
    "BATCH", "CONNECT_S", "RETRY_S", "Attempt", "LeaseLost", "Ledger", "Liveness", "Owner", "State",
    "StoreUnavailable", "Ticket", "TrialRecord", "check_storage", "close_all", "host_id", "is_local", "journal_of",
    "local_file", "pid_alive", "process_start", "retry_window", "retrying", "slurm_job",
]  # fmt: skip

BATCH = 500  # attempts queued per transaction by `enqueue_all`
_t = db.attempts


class Ledger(Store):
    """The attempts of every sweep in one database, and every transition of them: each one transaction with a
    conditional write that recognises its own retried first try."""

    def note(self, study: str) -> dict[str, Any]:
        """What the last sweep of `study` recorded about itself (e.g. the device `auto` resolved to, overrides)."""
        query = sa.select(db.notes.c.note).where(db.notes.c.study == study)
        return dict(self._tx(lambda c: c.execute(query).scalar_one_or_none(), read=True) or {})

    def set_note(self, study: str, note: dict[str, Any]) -> None:
        stmt = self._insert(db.notes).values(study=study, note=note, updated=self._now)
        replace = {"note": stmt.excluded.note, "updated": stmt.excluded.updated}
        stmt = stmt.on_conflict_do_update(index_elements=["study"], set_=replace)
        self._tx(lambda c: c.execute(stmt))

    def record_trials(self, study: str, records: Iterable[TrialRecord]) -> None:
        """Record trials and that `study` has them (a key's identity never changes: known ones are kept)."""
        records = list(records)
        if not records:
            return
        rows = [{**asdict(r), "created": time.time()} for r in records]
        links = [{"study": study, "key": r.key} for r in records]

        def once(conn: sa.Connection) -> None:
            conn.execute(self._insert(db.trials).on_conflict_do_nothing(), rows)
            conn.execute(self._insert(db.study_trials).on_conflict_do_nothing(), links)

        self._tx(once)

    def trials(self, study: str) -> list[TrialRecord]:
        """The trials recorded for `study`, by key."""
        query = (sa.select(db.trials.c.key, db.trials.c.config_hash, db.trials.c.seed, db.trials.c.identity_version)
                 .join(db.study_trials, db.study_trials.c.key == db.trials.c.key)
                 .where(db.study_trials.c.study == study).order_by(db.trials.c.key))  # fmt: skip
        return [TrialRecord(*r) for r in self._tx(lambda c: c.execute(query).all(), read=True)]

    # -- queueing and claiming -----------------------------------------------------------------------------
    def enqueue(self, ticket: Ticket) -> int | None:
        """Queue attempt `ticket.number` of its trial (WAITING) unless the trial has a live or complete attempt.

        Returns:
            The attempt's id, also when an identical enqueue (this call's own first try, whose reply was lost, or
            another reconciler's) queued it; None when the trial already had another live or complete attempt or
            that number was taken.
        """
        check_key(ticket.key)
        return self._tx(lambda c: self._enqueue(c, ticket))

    def enqueue_all(self, tickets: Iterable[Ticket]) -> list[int | None]:
        """`enqueue` for many tickets, `BATCH` to a transaction."""
        tickets = list(tickets)
        for t in tickets:
            check_key(t.key)
        out: list[int | None] = []
        for start in range(0, len(tickets), BATCH):
            chunk = tickets[start : start + BATCH]
            out += self._tx(lambda c, chunk=chunk: [self._enqueue(c, t) for t in chunk])
        return out

    def _enqueue(self, conn: sa.Connection, ticket: Ticket) -> int | None:
        attrs = ticket.to_attrs()
        other = _t.alias("other")
        held = sa.exists().where(other.c.key == ticket.key, other.c.state.in_(db.HELD))
        values = sa.select(
            sa.literal(ticket.key, sa.String),
            sa.literal(ticket.number, sa.Integer),
            sa.literal("WAITING", sa.String),
            sa.literal(attrs, db.Json()),
            self._now,
        ).where(~held)
        # The constraints (one live attempt per trial, one row per attempt number) make a racing or retried insert
        # insert nothing instead of failing.
        insert = (self._insert(_t).from_select(["key", "number", "state", "ticket", "queued_at"], values)
                  .on_conflict_do_nothing().returning(_t.c.id))  # fmt: skip
        new = conn.execute(insert).scalar_one_or_none()
        if new is not None:
            self._tickets[new] = ticket
            return new
        there = conn.execute(
            sa.select(_t.c.id, _t.c.ticket).where(_t.c.key == ticket.key, _t.c.number == ticket.number)
        )
        row = there.first()
        return row.id if row is not None and row.ticket == json.loads(json.dumps(attrs)) else None

    def claim(
        self, keys: Collection[str] | None, owner: Owner, serves: Callable[[Ticket], bool] = lambda _: True
    ) -> Attempt | None:
        """Take the oldest WAITING attempt of one of `keys` (None: any) that this worker `serves`, or None.

        The attempt becomes RUNNING with `owner` and a new token in one conditional write, only while its trial has
        no RUNNING or COMPLETE attempt; of two claimers exactly one gets it (PostgreSQL skips an attempt another
        claimer has locked, SQLite's immediate transaction lets one claimer in at a time).
        """
        token, tried = secrets.token_hex(8), False
        other, locked = _t.alias("other"), _t.alias("locked")
        query = sa.select(_t.c.id, _t.c.key).where(_t.c.state == "WAITING").order_by(_t.c.id)

        def candidates(conn: sa.Connection) -> list[int]:
            return [id_ for id_, key in conn.execute(query) if keys is None or key in keys]

        if not self._tx(candidates, read=True):
            return None  # the idle worker's usual look, without a write transaction

        def once(conn: sa.Connection) -> Attempt | None:
            nonlocal tried
            if tried and (mine := self._select(conn, _t.c.token == token)):
                return mine[0]  # the first try committed; its reply was lost
            tried = True
            for id_ in candidates(conn):
                if not serves(self._ticket(conn, id_)):
                    continue
                free = (sa.select(locked.c.id).where(locked.c.id == id_, locked.c.state == "WAITING")
                        .with_for_update(skip_locked=True).scalar_subquery())  # fmt: skip
                settled = sa.exists().where(other.c.key == _t.c.key, other.c.state.in_(("RUNNING", "COMPLETE")))
                took = conn.execute(sa.update(_t).where(_t.c.id == free, ~settled).values(
                    state="RUNNING", token=token, owner=asdict(owner), beat=1, claimed_at=self._now, beat_at=self._now
                ))  # fmt: skip
                if took.rowcount:
                    return self._select(conn, _t.c.id == id_)[0]
            return None

        return self._tx(once)

    # -- the holder's writes (fenced by the token) ---------------------------------------------------------
    def heartbeat(self, attempt: Attempt, *, epoch: int | None = None, steps: int | None = None) -> None:
        """Renew the lease (the database's now), with progress; LeaseLost if the attempt was ended meanwhile."""
        progress = {k: v for k, v in (("epoch", epoch), ("steps", steps)) if v is not None}
        self._renew(attempt, {"beat": _t.c.beat + 1, **progress})

    def update(self, attempt: Attempt, **values: Any) -> None:
        """Write progress (`epoch`, `steps`), `run_id` or `memory` of an attempt this process holds, renewing its
        lease; LeaseLost if it was ended meanwhile."""
        self._renew(attempt, _extras(values))

    def _renew(self, attempt: Attempt, values: dict[str, Any]) -> None:
        def once(conn: sa.Connection) -> None:
            if not conn.execute(sa.update(_t).where(_held(attempt)).values(**values, beat_at=self._now)).rowcount:
                raise LeaseLost

        self._tx(once)

    def complete(
        self,
        attempt: Attempt,
        value: float | None,
        outcome: Ending,
        *,
        result: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        """The attempt's result (finished or diverged): `value` is the final validation error (NaN or None if
        diverged), `result` the summary metrics; `run_id`, `memory`, `epoch`, `steps` may come along.

        Raises:
            LeaseLost: the attempt was ended by someone else (or its trial has a result already).
        """
        finite = value if value is not None and math.isfinite(value) else None
        ending = {"state": "COMPLETE", "outcome": Ending(outcome).value, "value": finite, "result": result}
        if not self._end(attempt, {**_extras(values), **ending}):
            raise LeaseLost

    def fail(self, attempt: Attempt, kind: Ending, reason: str, **values: Any) -> bool:
        """End an attempt without a result (by its holder, or by an observer that found its worker dead).

        Returns:
            False when it had already ended otherwise (someone else decided first).
        """
        ending = {"state": "FAIL", "kind": Ending(kind).value, "reason": reason[:500]}
        return self._end(attempt, {**_extras(values), **ending})

    def _end(self, attempt: Attempt, values: dict[str, Any]) -> bool:
        from sqlalchemy.exc import IntegrityError

        end_id = secrets.token_hex(8)

        def once(conn: sa.Connection) -> bool:
            end = sa.update(_t).where(_held(attempt)).values(**values, end_id=end_id, ended_at=self._now)
            try:
                if conn.execute(end).rowcount:
                    return True
            except IntegrityError:  # a second result for the trial: the constraint refuses it
                raise LeaseLost from None  # out of the transaction, which is rolled back
            # 0 rows: ended by someone else, or by this very call's first try whose COMMIT reply was lost
            return conn.execute(sa.select(_t.c.end_id).where(_t.c.id == attempt.trial_id)).scalar() == end_id

        try:
            return self._tx(once)
        except LeaseLost:
            return False

    # -- anyone's writes -----------------------------------------------------------------------------------
    def set_run_id(self, trial_id: int, run_id: str) -> str:
        """Record the MLflow run of an attempt unless it has another one; returns the run id that won (concurrent
        repairs that each made a run converge on one, and end the others)."""

        def once(conn: sa.Connection) -> str:
            unset = sa.or_(_t.c.run_id.is_(None), _t.c.run_id == run_id)
            conn.execute(sa.update(_t).where(_t.c.id == trial_id, unset).values(run_id=run_id))
            return conn.execute(sa.select(_t.c.run_id).where(_t.c.id == trial_id)).scalar_one()

        return self._tx(once)

    def parent(self, study: str) -> str | None:
        """The MLflow parent run the ledger holds for `study` (None before its first sweep claimed one)."""
        query = sa.select(db.parents.c.run_id).where(db.parents.c.study == study)
        return self._tx(lambda c: c.execute(query).scalar_one_or_none(), read=True)

    def claim_parent(self, study: str, run_id: str, stale: str | None = None) -> str:
        """Make `run_id` the study's parent run unless another one is held (or replace `stale`, a run that is gone);
        returns the one that won. A retried claim whose commit went through finds its own."""

        def once(conn: sa.Connection) -> str:
            if stale is not None:
                conn.execute(sa.delete(db.parents).where(db.parents.c.study == study, db.parents.c.run_id == stale))
            row = {"study": study, "run_id": run_id, "claimed": self._now}
            conn.execute(self._insert(db.parents).values(**row).on_conflict_do_nothing())
            return conn.execute(sa.select(db.parents.c.run_id).where(db.parents.c.study == study)).scalar_one()

        return self._tx(once)

    def expire(self) -> list[Attempt]:
        """End, as `lost`, every RUNNING attempt whose last beat is older than the grace by the database's clock
        (and any ownerless one older than the claim grace); returns them as ended.

        Any process may call it, as often and as many at once as they like: the age is compared with the
        database's now in the statement that ends the attempt, so a beat that reached the database first is never
        ended, however late the observer. An observer that had to wait for SQLite's write lock (held by a process
        paused mid-transaction, say, while no beat could land) ends nothing for a period, so that the beats queued
        behind that lock land first.
        """
        live = self.liveness
        beat_at = sa.func.coalesce(_t.c.beat_at, _t.c.claimed_at, _t.c.queued_at)
        stale = sa.and_(_t.c.state == "RUNNING", sa.or_(
            sa.and_(_t.c.owner.is_not(None), beat_at < self._now - live.grace_s),
            sa.and_(_t.c.owner.is_(None), beat_at < self._now - live.claim_grace_s),
        ))  # fmt: skip
        if not self._tx(lambda c: c.execute(sa.select(_t.c.id).where(stale).limit(1)).first(), read=True):
            return []  # the usual case, without a write transaction (SQLite has one writer at a time)
        if time.monotonic() - self._locked_out < live.heartbeat_s:
            return []  # just locked out: the beats that queued with us get a period to land
        reason = sa.case(
            (_t.c.owner.is_(None), f"claimed but no owner named for {live.claim_grace_s:g} s (claimer killed)"),
            else_=f"no heartbeat for {live.grace_s:g} s by the ledger's clock (its host died or its worker is paused)",
        )
        end_id = secrets.token_hex(8)

        def once(conn: sa.Connection) -> list[Attempt]:
            mine = self._select(conn, _t.c.end_id == end_id)
            if mine:
                return mine  # a first try committed; its reply was lost
            if conn.info.get(db.LOCK_WAIT, 0.0) > db.LOCK_HELD_S:
                # We waited for SQLite's write lock (held by a process paused mid-transaction, say): beats queued
                # behind it with us may not have landed yet, so the leases' age says nothing. A pass a period later
                # judges, after them (a wait in ordinary contention costs one pass).
                self._locked_out = time.monotonic()
                return []
            lost = {"state": "FAIL", "kind": Ending.LOST.value, "reason": reason, "end_id": end_id}
            conn.execute(sa.update(_t).where(stale).values(**lost, ended_at=self._now))
            return self._select(conn, _t.c.end_id == end_id)

        return self._tx(once)


def _extras(values: dict[str, Any]) -> dict[str, Any]:
    """What a holder's write may carry besides its own fields."""
    unknown = set(values) - {"epoch", "steps", "run_id", "memory"}
    if unknown:
        raise TypeError(f"Ledger: unknown fields {sorted(unknown)}; allowed: epoch, steps, run_id, memory")
    return values


def _held(attempt: Attempt) -> sa.ColumnElement[bool]:
    """The row of `attempt` while the lease it was handed is still in force."""
    return sa.and_(_t.c.id == attempt.trial_id, _t.c.token == attempt.token, _t.c.state == "RUNNING")
