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

import enum
import json
import math
import os
import platform
import secrets
import sqlite3
import sys
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from ablations.errors import SenetError, StoreUnavailable
from ablations.exits import at_exit
from ablations.outcomes import Ending
from ablations.paths import DB_RETRY_ENV, HEARTBEAT_ENV, check_key, env_seconds
from ablations.sweep import _ledger_db as db
from ablations.sweep.ticket import Ticket
from ablations.urls import check_url, redact, scrub

RETRY_S = 120.0  # how long to ride out a database outage, unless $SENET_ABLATE_DB_RETRY_S says otherwise
# How long a command waits for the database it was given before saying so (never longer than the retry window): a
# typo or a server that is down should cost the user seconds, not the two minutes a running sweep rides out.
CONNECT_S = 5.0
BATCH = 500  # attempts queued per transaction by `enqueue_all`
T = TypeVar("T")
_t = db.attempts


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


# -- identities ------------------------------------------------------------------------------------------------


def host_id() -> str:
    """Which processes can see each other's pids: the kernel boot plus the pid namespace.

    Containers that share a hostname have their own pid namespaces, so they get different ids and judge each
    other by heartbeat, never by a pid that means another process in their own namespace.
    `SENET_ABLATE_HOST_ID` overrides it (tests simulate two hosts on one machine with it).
    """
    override = os.environ.get("SENET_ABLATE_HOST_ID")
    if override:
        return override
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return platform.node()
    return f"{platform.node()}/{boot}/{namespace}"


def slurm_job() -> tuple[str | None, int]:
    """The Slurm job this process runs in (`123_4` for an array task, else the job id; None outside Slurm) and
    which run of it this is (a requeued job runs again under the same id: SLURM_RESTART_COUNT)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return job, int(restarts) if restarts.isdigit() else 0


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start: int | None) -> bool:
    """Whether `pid` is the same live process (not a zombie, not a new process that reused the number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return start is None
    return state != "Z" and (start is None or process_start(pid) == start)


@dataclass(frozen=True)
class Owner:
    """The process holding an attempt's lease."""

    host: str  # hostname, for people
    host_id: str  # processes with the same host_id can check each other's pids
    pid: int
    start: int | None  # process start time, against pid reuse
    token: str  # random per process (the lease's fencing token is the attempt's, new at every claim)
    job: str | None = None  # the Slurm job it runs in (`123_4` for an array task), whose end Slurm can tell
    restarts: int = 0  # which run of that job (a requeued job runs again under the same id)

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        job, restarts = slurm_job()
        return cls(platform.node(), host_id(), pid, process_start(pid), secrets.token_hex(4), job, restarts)

    def is_local(self) -> bool:
        return self.host_id == host_id()


@dataclass(frozen=True)
class Liveness:
    """How the ledger tells a live attempt from a dead one; stored in the ledger, the same for every process.

    Attributes:
        heartbeat_s: a running attempt's worker beats this often (seconds).
        grace_s: an attempt whose last beat is older than this by the database's clock is dead: its host died or
            its worker is paused.
        claim_grace_s: an ownerless RUNNING attempt (none is made now: a claim names its owner in the same write;
            an imported ledger may hold one) older than this is dead.
    """

    heartbeat_s: float = 30.0
    grace_s: float = 120.0
    claim_grace_s: float = 10.0

    @classmethod
    def from_env(cls) -> Liveness:
        """The settings a new ledger is created with: `SENET_ABLATE_HEARTBEAT_S` (default 30) and 4 periods."""
        beat = env_seconds(HEARTBEAT_ENV, 30.0)
        return cls(beat, 4 * beat, min(10.0, 4 * beat))


# -- attempts --------------------------------------------------------------------------------------------------


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


# -- URLs and outages ------------------------------------------------------------------------------------------


def check_storage(url: str) -> None:
    """Refuse an unknown scheme, or a URL typo that would become a SQLite file named after the credentials."""
    check_url(url.removeprefix("journal://"), "--storage", ("sqlite", "postgresql", "postgres"))
    path = local_file(url)
    if path is not None and path.name in ("", ":memory:"):
        raise SenetError(f"--storage: {redact(url)} names no file; allowed: a path, sqlite:///PATH, postgresql://...")


def local_file(url: str) -> Path | None:
    """The SQLite file of a local ledger (a path, `sqlite:///PATH` or a 0.2 `journal://PATH`), None for a server.

    A `.journal` path (the 0.2 default, `results/ledger.journal`) means the database beside it, `ledger.db`.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    elif "://" not in url or url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
    else:
        return None
    return path.with_suffix(".db") if path.suffix == ".journal" else path


def is_local(url: str) -> bool:
    """A SQLite file on this host (created on first open), rather than a database server."""
    return local_file(url) is not None


def journal_of(path: Path) -> Path:
    """The 0.2 journal a SQLite ledger at `path` imports when it is created."""
    return path.with_suffix(".journal")


def _transient(err: BaseException) -> bool:
    """A database hiccup worth waiting out: connection refused or dropped, server restarting, SQLite busy."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    if not isinstance(err, OperationalError):
        return False
    if isinstance(err.orig, sqlite3.Error):  # else "no such table" and its kind would be waited on for nothing
        text = str(err.orig).lower()
        return any(s in text for s in ("locked", "busy", "disk i/o error", "disk is full"))
    return True


def retry_window() -> float:
    """How long a database outage is ridden out: `SENET_ABLATE_DB_RETRY_S`, read at use (a bad value is one line)."""
    return env_seconds(DB_RETRY_ENV, RETRY_S)


def retrying(fn: Callable[[], T], where: str = "the ledger database", patience: float | None = None) -> T:
    """Call `fn`, retrying transient database errors with back-off for up to `patience` (RETRY_S) seconds.

    Raises:
        StoreUnavailable: still failing after the patience.
    """
    window = retry_window()
    patience = window if patience is None else min(patience, window)
    delay, deadline = 0.2, time.monotonic() + patience
    while True:
        try:
            return fn()
        except Exception as err:
            if not _transient(err):
                raise
            if time.monotonic() + delay > deadline:
                first = str(getattr(err, "orig", None) or err).strip().splitlines()
                raise StoreUnavailable(
                    f"{where} unreachable for {patience:g} s ({type(err).__name__}: {first[0][:160] if first else ''}"
                    "); rerun the same command to resume"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- the ledger ------------------------------------------------------------------------------------------------


class Ledger:
    """The attempts of every sweep in one database. Every call rides out a database outage of up to `retry_s`."""

    def __init__(self, engine: sa.Engine, url: str, retry_s: float | None = None) -> None:
        self.engine = engine
        self.url = url
        self.retry_s = retry_window() if retry_s is None else retry_s
        self.where = f"--storage: {redact(url)}"
        self._dialect = engine.dialect.name
        self._now = db.clock(self._dialect)
        self._insert = db.insert(self._dialect)
        self._tickets: dict[int, Ticket] = {}  # a ticket never changes once queued: read once per process
        self.liveness = Liveness()
        self._locked_out = -math.inf  # when `expire` last had to wait for SQLite's write lock (monotonic)
        _OPEN.add(engine)

    @classmethod
    def open(
        cls,
        url: str,
        log: Callable[[str], None] | None = None,
        patience: float | None = None,
        *,
        liveness: Liveness | None = None,
        retry_s: float | None = None,
    ) -> Ledger:
        """The ledger at `url`, created or upgraded in place; a database is waited for up to `patience` seconds
        (default RETRY_S; commands starting up give CONNECT_S).

        Args:
            url: a path or `sqlite:///PATH` (SQLite), or `postgresql://...`.
            log: where the import of a 0.2 journal is reported (stderr).
            liveness: the settings of a ledger created now (default: `Liveness.from_env()`); an existing ledger
                keeps its own.
            retry_s: how long later calls ride out an outage (RETRY_S).

        Raises:
            SenetError: a bad URL, a folder that cannot be created, a network filesystem under SQLite, a missing
                driver, a database that cannot be opened or stays unreachable (password redacted), a ledger of a
                newer senet-ablate, a damaged journal.
        """
        check_storage(url)
        path = local_file(url)
        try:
            if path is None:
                engine = db.postgres_engine(url)
            else:
                read_only = path.exists() and not os.access(path.parent, os.W_OK)  # `status` on a read-only copy
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise SenetError(f"--storage: cannot create {path.parent} ({err.strerror})") from None
                db.check_local_disk(path)
                engine = db.sqlite_engine(path, read_only)
            ledger = cls(engine, url, retry_s)
            ledger._setup(patience, liveness, journal_of(path) if path is not None else None, log)
        except SenetError:
            raise
        except StoreUnavailable as err:
            raise SenetError(scrub(str(err), url)) from None
        except ModuleNotFoundError as err:
            raise SenetError(
                f"--storage: {redact(url)} needs {err.name}; pip install 'senet-ablate[postgres]'"
            ) from None
        except Exception as err:
            reason = scrub(str(err).strip().splitlines()[0][:160] if str(err).strip() else "", url)
            raise SenetError(f"--storage: cannot open {redact(url)} ({type(err).__name__}: {reason})") from None
        return ledger

    @staticmethod
    def exists(url: str) -> bool:
        """Whether opening `url` would find a ledger (or a 0.2 journal to import) rather than make an empty one;
        a server is taken to have one."""
        path = local_file(url)
        return path is None or path.exists() or journal_of(path).exists()

    def close(self) -> None:
        self.engine.dispose()
        _OPEN.discard(self.engine)

    def _setup(
        self, patience: float | None, liveness: Liveness | None, journal: Path | None, log: Callable[[str], None] | None
    ) -> None:
        version = self._tx(db.stored_version, read=True, patience=patience)
        if version > db.LATEST:
            raise SenetError(
                f"{self.where} has ledger schema {version}, made by a newer senet-ablate (this one knows up to "
                f"{db.LATEST}); upgrade senet-ablate"
            )
        if version < db.LATEST:
            self._tx(lambda c: self._upgrade(c, liveness, journal), patience=patience)
        row = self._tx(lambda c: c.execute(sa.select(db.meta)).one(), read=True, patience=patience)
        self.liveness = Liveness(row.heartbeat_s, row.grace_s, row.claim_grace_s)
        if journal is not None and row.imported_from == str(journal.resolve()) and os.access(journal.parent, os.W_OK):
            backup = journal.with_name(journal.name + ".imported")
            try:  # also finishes an import whose process died between its commit and this rename
                os.replace(journal, backup)
            except FileNotFoundError:  # renamed already (by a process that opened it at the same time)
                return
            (log or (lambda s: print(s, file=sys.stderr)))(
                f"ledger: imported {journal} into {self.url}; kept as {backup}"
            )

    def _upgrade(self, conn: sa.Connection, liveness: Liveness | None, journal: Path | None) -> None:
        """Bring the schema up to date; a ledger created now from a folder with a 0.2 journal imports it, in the
        same transaction (so two first opens import it once)."""
        if db.stored_version(conn) == 0 and journal is not None and journal.exists():
            from ablations.sweep._ledger_journal import read_journal

            found = read_journal(journal, conn.execute(sa.select(self._now)).scalar_one())
            settings = Liveness(**found.liveness) if found.liveness else liveness or Liveness.from_env()
            db.upgrade(conn, asdict(settings))
            self._load(conn, found.rows, found.notes)
            conn.execute(sa.update(db.meta).values(imported_from=str(journal.resolve())))
            return
        db.upgrade(conn, asdict(liveness or Liveness.from_env()))

    def import_journal(self, path: Path) -> int:
        """Import a 0.2 journal into this ledger, which must hold no attempts yet (e.g. a new PostgreSQL database);
        returns how many attempts it held. The journal is left in place."""
        from ablations.sweep._ledger_journal import read_journal

        def once(conn: sa.Connection) -> int:
            if conn.execute(sa.select(sa.func.count()).select_from(_t)).scalar_one():
                raise SenetError(f"{self.where} already holds attempts; import {path} into a new ledger")
            found = read_journal(path, conn.execute(sa.select(self._now)).scalar_one())
            self._load(conn, found.rows, found.notes)
            return len(found.rows)

        return self._tx(once)

    def _load(self, conn: sa.Connection, rows: list[dict[str, Any]], found: dict[str, dict[str, Any]]) -> None:
        if rows:
            conn.execute(sa.insert(_t), rows)
        for study, note in found.items():
            conn.execute(sa.insert(db.notes).values(study=study, note=note, updated=self._now))
        if self._dialect == "postgresql":  # explicit ids: the id sequence starts after them
            conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{_t.name}', 'id'), "
                                 f"COALESCE((SELECT MAX(id) FROM {_t.name}), 0) + 1, false)"))  # fmt: skip

    # -- transactions --------------------------------------------------------------------------------------
    def _run(self, fn: Callable[[sa.Connection], T], read: bool) -> T:
        """One transaction: `fn` on a connection, committed if it returns, rolled back if it raises."""
        with self.engine.connect() as conn:
            if read:
                conn.execution_options(ledger_read=True)
            with conn.begin():
                return fn(conn)

    def _tx(self, fn: Callable[[sa.Connection], T], read: bool = False, patience: float | None = None) -> T:
        """`fn` in one transaction, retried as a whole over transient errors (so `fn` must recognise a first try
        that committed although its reply was lost)."""
        return retrying(lambda: self._run(fn, read), self.where, self.retry_s if patience is None else patience)

    def clock(self) -> float:
        """The database's now, seconds since 1970: the clock leases are judged by."""
        return self._tx(lambda c: c.execute(sa.select(self._now)).scalar_one(), read=True)

    # -- reading -------------------------------------------------------------------------------------------
    def attempts(self) -> list[Attempt]:
        """Every attempt, in the order they were queued (one read; tickets only of attempts new to this process)."""
        return self._tx(lambda c: self._select(c, None), read=True)

    def attempt(self, trial_id: int) -> Attempt:
        """The attempt with this id; KeyError if there is none."""
        found = self._tx(lambda c: self._select(c, _t.c.id == trial_id), read=True)
        if not found:
            raise KeyError(trial_id)
        return found[0]

    def _select(self, conn: sa.Connection, where: sa.ColumnElement[bool] | None) -> list[Attempt]:
        query = sa.select(*(c for c in _t.c if c.name != "ticket")).order_by(_t.c.id)
        rows = conn.execute(query if where is None else query.where(where)).all()
        missing = [r.id for r in rows if r.id not in self._tickets]
        if missing:
            # ids grow with time, so the tickets new to this process are one range (a few ids: those alone)
            which = _t.c.id.in_(missing) if len(missing) <= 100 else _t.c.id >= min(missing)
            for id_, attrs in conn.execute(sa.select(_t.c.id, _t.c.ticket).where(which)):
                self._tickets[id_] = Ticket.from_attrs(attrs)
        return [Attempt.from_row(r, self._tickets[r.id]) for r in rows]

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

    def _ticket(self, conn: sa.Connection, trial_id: int) -> Ticket:
        if trial_id not in self._tickets:
            attrs = conn.execute(sa.select(_t.c.ticket).where(_t.c.id == trial_id)).scalar_one()
            self._tickets[trial_id] = Ticket.from_attrs(attrs)
        return self._tickets[trial_id]

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


# The engines of this process's ledgers not closed yet (an engine outlives its ledger until the garbage collector
# finds the cycle its event listeners make; one it collected has closed its connections).
_OPEN: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def close_all() -> None:
    """Close every ledger this process opened (before it ends at once: `ablations.exits`)."""
    for engine in list(_OPEN):
        engine.dispose()


at_exit(close_all)


def _extras(values: dict[str, Any]) -> dict[str, Any]:
    """What a holder's write may carry besides its own fields."""
    unknown = set(values) - {"epoch", "steps", "run_id", "memory"}
    if unknown:
        raise TypeError(f"Ledger: unknown fields {sorted(unknown)}; allowed: epoch, steps, run_id, memory")
    return values


def _held(attempt: Attempt) -> sa.ColumnElement[bool]:
    """The row of `attempt` while the lease it was handed is still in force."""
    return sa.and_(_t.c.id == attempt.trial_id, _t.c.token == attempt.token, _t.c.state == "RUNNING")
