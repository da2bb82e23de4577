"""The ledger's backends, one list every ledger test runs over (as Optuna's `STORAGE_MODES`)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


def ledger_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty ledger of `backend`: a file under `tmp_path`, or a new database on the session's throwaway
    PostgreSQL cluster (the test skips, saying why, where that cannot start)."""
    if backend == "sqlite":
        return str(tmp_path / "ledger.db")
    pg = request.getfixturevalue("pg")
    return pg.createdb(f"ledger_{secrets.token_hex(4)}")
