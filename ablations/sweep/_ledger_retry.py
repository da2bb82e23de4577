"""Where a ledger lives and how its outages are ridden out: the `--storage` URL (a SQLite file or a PostgreSQL
server) and the retry of transient database errors within the retry window."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ablations.errors import SenetError, StoreUnavailable
from ablations.paths import DB_RETRY_ENV, env_seconds
from ablations.urls import check_url, redact

RETRY_S = 120.0  # how long to ride out a database outage, unless $SENET_ABLATE_DB_RETRY_S says otherwise
# How long a command waits for the database it was given before saying so (never longer than the retry window): a
# typo or a server that is down should cost the user seconds, not the two minutes a running sweep rides out.
CONNECT_S = 5.0
T = TypeVar("T")


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
