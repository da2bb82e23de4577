"""Fixtures of the harness tests; the plain helpers they and the tests use live in `tests/_support/`."""

from __future__ import annotations

from typing import Any

import pytest

from tests._support.postgres import start_postgres


@pytest.fixture(scope="session")
def pg() -> Any:
    """One throwaway PostgreSQL cluster for the session (skips, saying why, where it cannot start)."""
    server, why = start_postgres()
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    yield server
    server.stop()
