"""The ledger's database: its tables, their numbered migrations, the engines and the database's clock.

The tables are prefixed `senet_`: a PostgreSQL database may also hold MLflow's tables, or the Optuna tables of a
0.2 ledger (with a `trials` table of its own). Each step of `STEPS` takes the schema from version n to n+1 with
Alembic's operations (no Alembic environment or revision files: the steps are code, applied in order in one
transaction, and the version reached is recorded in `senet_meta`). The `Table` objects are the current schema the
queries use; a released step is history and never changes (a later issue appends one), so the steps spell their
columns out instead of reusing the tables, and a test checks that the two agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ablations.errors import SenetError
from ablations.urls import with_driver

if TYPE_CHECKING:
    from alembic.operations import Operations

HELD = ("WAITING", "RUNNING", "COMPLETE")  # states that keep a trial from being queued again
LIVE = ("WAITING", "RUNNING")
LOCK_WAIT = "senet_lock_wait_s"  # a SQLite connection's `info` key: its last BEGIN's wait for the write lock
LOCK_HELD_S = 0.05  # a wait that long for the write lock means another connection held it (transactions take ms)
BUSY_S = 10.0  # how long a SQLite connection waits for another's write transaction before saying "locked"
_MIGRATION_LOCK = 727379  # PostgreSQL advisory lock of one migration transaction (freed with it)


class Json(sa.types.TypeDecorator[Any]):
    """A JSON value kept as text, alike on SQLite and PostgreSQL; NaN survives (a diverged run's metrics)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


metadata = sa.MetaData()
meta = sa.Table(
    "senet_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # one row, id 1
    sa.Column("version", sa.Integer, nullable=False),  # schema version: the number of steps applied
    sa.Column("heartbeat_s", sa.Double, nullable=False),
    sa.Column("grace_s", sa.Double, nullable=False),
    sa.Column("claim_grace_s", sa.Double, nullable=False),
    sa.Column("created", sa.Double, nullable=False),  # database clock, seconds since 1970
    sa.Column("imported_from", sa.Text),  # the Optuna journal this ledger was made from
)
attempts = sa.Table(
    "senet_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # the attempt id (`senet.attempt_id` in MLflow)
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("ticket", Json, nullable=False),
    sa.Column("token", sa.String(32)),  # fencing token, new at every claim
    sa.Column("owner", Json),
    sa.Column("beat", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("steps", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("outcome", sa.String(16)),
    sa.Column("kind", sa.String(16)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("memory", Json),
    sa.Column("result", Json),
    sa.Column("value", sa.Double),
    sa.Column("queued_at", sa.Double, nullable=False),  # database clock, seconds since 1970
    sa.Column("claimed_at", sa.Double),
    sa.Column("beat_at", sa.Double),
    sa.Column("ended_at", sa.Double),
    sa.Column("end_id", sa.String(32)),  # random id of the write that ended it: a retried end knows its own commit
    sqlite_autoincrement=True,  # ids are never reused: MLflow runs are tagged with them
)
notes = sa.Table(
    "senet_notes",
    metadata,
    sa.Column("study", sa.String(200), primary_key=True),
    sa.Column("note", Json, nullable=False),
    sa.Column("updated", sa.Double, nullable=False),
)
trials = sa.Table(
    "senet_trials",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("config_hash", sa.String(64), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("identity_version", sa.Integer, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
)
study_trials = sa.Table(
    "senet_study_trials",
    metadata,
    sa.Column("study", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
)
parents = sa.Table(
    "senet_parents",
    metadata,
    sa.Column("study", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),  # the study's MLflow parent run
    sa.Column("claimed", sa.Double, nullable=False),  # database clock
)


# -- migrations ------------------------------------------------------------------------------------------------


def _where(sql: str) -> dict[str, Any]:
    """A partial index's predicate, for both backends."""
    return {"sqlite_where": sa.text(sql), "postgresql_where": sa.text(sql)}


def _v1(op: Operations) -> None:
    """meta, attempts and notes: what the Optuna journal of senet-ablate 0.2 held, with the constraints that make
    every transition exactly once."""
    op.create_table(
        "senet_meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("heartbeat_s", sa.Double, nullable=False),
        sa.Column("grace_s", sa.Double, nullable=False),
        sa.Column("claim_grace_s", sa.Double, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("imported_from", sa.Text),
    )
    op.create_table(
        "senet_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("ticket", sa.Text, nullable=False),
        sa.Column("token", sa.String(32)),
        sa.Column("owner", sa.Text),
        sa.Column("beat", sa.Integer, nullable=False, server_default="0"),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("steps", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("run_id", sa.String(64)),
        sa.Column("outcome", sa.String(16)),
        sa.Column("kind", sa.String(16)),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("memory", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("value", sa.Double),
        sa.Column("queued_at", sa.Double, nullable=False),
        sa.Column("claimed_at", sa.Double),
        sa.Column("beat_at", sa.Double),
        sa.Column("ended_at", sa.Double),
        sa.Column("end_id", sa.String(32)),
        sa.UniqueConstraint("key", "number", name="senet_attempts_key_number"),  # a retried enqueue inserts nothing
        sa.CheckConstraint("state IN ('WAITING', 'RUNNING', 'COMPLETE', 'FAIL')", name="senet_attempts_state_known"),
        sqlite_autoincrement=True,
    )
    # At most one live attempt per trial, and a result accepted at most once per trial: constraints, not checks.
    op.create_index(
        "senet_attempts_one_live", "senet_attempts", ["key"], unique=True, **_where("state IN ('WAITING', 'RUNNING')")
    )
    op.create_index("senet_attempts_one_result", "senet_attempts", ["key"], unique=True, **_where("state = 'COMPLETE'"))
    op.create_index(
        "senet_attempts_state", "senet_attempts", ["state"]
    )  # claim and expire look at WAITING / RUNNING only
    op.create_table(
        "senet_notes",
        sa.Column("study", sa.String(200), primary_key=True),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("updated", sa.Double, nullable=False),
    )


def _v2(op: Operations) -> None:
    """trials and study_trials: each trial's identity (key, config hash, seed, identity version) and its studies,
    so a study's trials can be read back from the ledger rather than re-derived from the spec."""
    op.create_table(
        "senet_trials",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("identity_version", sa.Integer, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
    )
    op.create_table(
        "senet_study_trials",
        sa.Column("study", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
    )


def _v3(op: Operations) -> None:
    """parents: each study's MLflow parent run, claimed by one insert (sweeps starting together each make a run,
    as MLflow has no transactions, and all keep the one the ledger holds)."""
    op.create_table(
        "senet_parents",
        sa.Column("study", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("claimed", sa.Double, nullable=False),
    )


STEPS: tuple[Callable[[Operations], None], ...] = (_v1, _v2, _v3)  # step i takes the schema from version i to i + 1
LATEST = len(STEPS)


def stored_version(conn: sa.Connection) -> int:
    """The schema version of the ledger on `conn`: 0 for an empty database."""
    if not sa.inspect(conn).has_table(meta.name):
        return 0
    return conn.execute(sa.select(meta.c.version)).scalar_one_or_none() or 0


def upgrade(conn: sa.Connection, settings: dict[str, float], target: int = LATEST) -> int:
    """Apply the missing steps up to `target` inside the caller's transaction; returns the version found before.

    `settings` holds the liveness settings a new ledger's `meta` row starts with. On PostgreSQL a transaction-scoped
    advisory lock orders two first opens (SQLite's immediate transaction does that by itself).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
    before = stored_version(conn)
    if before >= target:
        return before
    from alembic.operations import Operations  # only when a step is due: most opens find the schema current
    from alembic.runtime.migration import MigrationContext

    op = Operations(MigrationContext.configure(conn))
    for version in range(before, target):
        STEPS[version](op)
        if version == 0:
            conn.execute(sa.insert(meta).values(id=1, version=1, created=clock(conn.dialect.name), **settings))
        else:
            conn.execute(sa.update(meta).values(version=version + 1))
    return before


# -- engines and the clock -------------------------------------------------------------------------------------


def clock(dialect: str) -> sa.ColumnElement[float]:
    """The database's own now, in seconds since 1970: what every lease is judged by. One value throughout a
    statement (SQLite's 'now' is; PostgreSQL's `statement_timestamp()`, unlike `clock_timestamp()`), so a claim's
    claimed_at and beat_at agree."""
    if dialect == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double)
    return sa.literal_column("CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)", sa.Double)


def insert(dialect: str) -> Callable[..., Any]:
    """The dialect's INSERT, which has ON CONFLICT."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert

    return postgresql_insert


def sqlite_engine(path: Path, read_only: bool = False) -> sa.Engine:
    """A SQLite file in WAL mode whose write transactions begin IMMEDIATE (the write lock at BEGIN, so two
    transactions never both read and then both write) and whose reads begin deferred (`ledger_read`).

    pysqlite's own BEGIN handling is switched off, as SQLAlchemy's SQLite notes describe, so that ours is the only
    one and DDL is transactional too.
    """
    if sqlite3.sqlite_version_info < (3, 35):
        raise SenetError(
            f"--storage: SQLite {sqlite3.sqlite_version} is too old for the ledger; allowed: 3.35 or newer"
        )
    if read_only:  # a folder nobody can write to holds no live writer: read the file as it is, writing nothing
        url = sa.URL.create("sqlite", database=f"file:{path}", query={"immutable": "1", "uri": "true"})
    else:
        url = sa.URL.create("sqlite", database=str(path))
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_S})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only folder: readers go on in its mode
            dbapi.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        asked = time.monotonic()
        reading = read_only or conn.get_execution_options().get("ledger_read")
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")
        conn.info[LOCK_WAIT] = time.monotonic() - asked  # how long another connection held the write lock

    return engine


def postgres_engine(url: str) -> sa.Engine:
    """A PostgreSQL engine (psycopg 3 for a plain `postgresql://`); a dead pooled connection is replaced."""
    connect = {"connect_timeout": 10, "application_name": "senet-ablate ledger"}
    return sa.create_engine(with_driver(url, "--storage"), pool_pre_ping=True, connect_args=connect)


# -- SQLite only on a local disk -------------------------------------------------------------------------------

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "cifs", "gpfs", "beegfs", "ceph", "fuse.ceph-fuse", "fuse.sshfs",
                       "glusterfs", "fuse.glusterfs")  # fmt: skip
_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space in a path as \040


def filesystem_of(path: str, mountinfo: str) -> str | None:
    """The filesystem type of the mount holding the absolute, resolved `path`, from /proc/self/mountinfo's text.

    A line reads `id parent major:minor root MOUNT_POINT options [optional...] - FSTYPE source super-options`; the
    deepest mount point above `path` wins, and of equal ones the last (a later mount hides an earlier one).
    """
    best, found = -1, None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), right.split()[0]
    return found


def is_network(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("smb")


def check_local_disk(path: Path) -> None:
    """Refuse a SQLite ledger on a network filesystem, whose locks SQLite cannot rely on (two hosts would corrupt it
    or both win a claim)."""
    try:
        info = Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux: nothing to tell by
        return
    fstype = filesystem_of(os.path.realpath(path.parent), info)
    if fstype is not None and is_network(fstype):
        raise SenetError(
            f"--storage: {path} is on a network filesystem ({fstype}), where SQLite's locks are not safe; for many "
            "hosts give every one --storage postgresql://user@host/db, or put --results on a local disk"
        )
