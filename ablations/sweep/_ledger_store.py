"""A ledger's database: opening (created or upgraded in place, a 0.2 journal imported), one retried transaction per
call, the database's clock, and reading attempts with their tickets cached per process."""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa

from ablations.errors import SenetError, StoreUnavailable
from ablations.exits import at_exit
from ablations.sweep import _ledger_db as db
from ablations.sweep._ledger_attempts import Attempt
from ablations.sweep._ledger_owner import Liveness
from ablations.sweep._ledger_retry import T, check_storage, journal_of, local_file, retry_window, retrying
from ablations.sweep.ticket import Ticket
from ablations.urls import redact, scrub

_t = db.attempts


class Store:
    """A ledger database opened, created or upgraded, its transactions retried over outages, and its attempts read
    (`ablations.sweep.ledger.Ledger` adds the writes). Every call rides out a database outage of up to `retry_s`."""

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
    ) -> Self:
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

    def _ticket(self, conn: sa.Connection, trial_id: int) -> Ticket:
        if trial_id not in self._tickets:
            attrs = conn.execute(sa.select(_t.c.ticket).where(_t.c.id == trial_id)).scalar_one()
            self._tickets[trial_id] = Ticket.from_attrs(attrs)
        return self._tickets[trial_id]


# The engines of this process's ledgers not closed yet (an engine outlives its ledger until the garbage collector
# finds the cycle its event listeners make; one it collected has closed its connections).
_OPEN: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def close_all() -> None:
    """Close every ledger this process opened (before it ends at once: `ablations.exits`)."""
    for engine in list(_OPEN):
        engine.dispose()


at_exit(close_all)
