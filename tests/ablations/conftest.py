"""Fixtures of the harness tests; the plain helpers they and the tests use live in `tests/_support/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests._support.datasets import write_cifar
from tests._support.postgres import start_postgres


@pytest.fixture(scope="session")
def pg() -> Any:
    """One throwaway PostgreSQL cluster for the session (skips, saying why, where it cannot start)."""
    server, why = start_postgres()
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, 10)
    write_cifar(root, 100)
    return root


@pytest.fixture
def default_cifar(_tiny_cifar: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny CIFAR-10/100 pickles in the default data folder: the keys of the shipped CIFAR studies hold the digest of
    their files, which this machine need not have (their contents matter to no test that plans)."""
    monkeypatch.setattr("ablations.datafiles.DEFAULT_DATA", _tiny_cifar)
    return _tiny_cifar


@pytest.fixture(scope="session")
def made_results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A results folder with a study in every state (`tests._support.results`): read it, never change it (copy it
    with `copy_results` first)."""
    from tests._support.results import make_results

    return make_results(tmp_path_factory.mktemp("made"))
