"""Shared helpers and the tiny configurations of the harness tests: one home, so test modules never import each
other (as Optuna keeps its shared fixtures in `optuna/testing/`)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState

from ablations.config import RunConfig, build_config
from ablations.paths import CACHE_ENV
from ablations.sweep.ledger import Attempt, Ledger
from ablations.tracking import Tracker
from tests.ablations._postgres import Postgres, start_postgres

ROOT = Path(__file__).resolve().parents[2]
# The suite's own cache folder (the empty MLflow database that new results folders copy), never the user's.
_CACHE = tempfile.mkdtemp(prefix="senet-ablate-cache-")
os.environ[CACHE_ENV] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
# Child processes see neither the developer's tracking server nor ledger, only what a test gives them.
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SENET_ABLATE_STORAGE")}
ENV["PYTHONPATH"] = str(ROOT)

# The tiny configuration every harness test starts from: ResNet-20 on 8×8 synthetic images of 3 classes,
# 128 training and 32 validation images, 2 epochs of 4 steps: about a second of CPU per trial.
TINY: dict[str, dict[str, Any]] = {
    "model": {"name": "resnet20"},
    "se": {"reduction": 4},
    "data": {"dataset": "synthetic", "val_size": 32, "synthetic_train": 160, "synthetic_test": 32,
             "synthetic_size": 8, "synthetic_classes": 3},
    "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 128},
}  # fmt: skip


def tiny_tree(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """TINY with some fields of some sections replaced, e.g. `tiny_tree(train={"epochs": 4})`."""
    tree = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return tree


def tiny_config(**sections: dict[str, Any]) -> RunConfig:
    return build_config(tiny_tree(**sections))


def write_spec(
    tmp_path: Path,
    name: str = "tiny",
    grid: dict[str, Any] | None = None,
    extra: list[dict[str, Any]] | None = None,
    seeds: Any = 2,
    **sections: dict[str, Any],
) -> Path:
    """A study file on the tiny configuration: by default the gate (sigmoid, tanh) × 2 seeds = 4 trials."""
    spec: dict[str, Any] = {
        "name": name,
        "description": "tiny synthetic study for tests",
        "base": tiny_tree(**sections),
        "grid": grid if grid is not None else {"se.excitation": ["sigmoid", "tanh"]},
        "seeds": seeds,
    }
    if extra is not None:
        spec["extra"] = extra
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`senet-ablate ARGS` as its own process (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})})  # fmt: skip


def wait_for(predicate: Any, timeout: float = 120.0, every: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy (an exception counts as not yet) and return its value."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
        except Exception:  # a file being replaced at this very moment
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def journal(results: Path) -> str:
    return str(results / "ledger.journal")


def attempts(url: str) -> list[Attempt]:
    return Ledger.open(url).attempts()


def tracker(results: Path) -> Tracker:
    return Tracker(f"sqlite:///{results / 'mlflow.db'}", results)


def assert_each_trial_complete_once(storage: str, uri_or_results: str | Path, n: int) -> None:
    """The promise of a sweep: n trials COMPLETE once each, each with exactly one FINISHED run, none RUNNING."""
    done = Counter(a.key for a in attempts(storage) if a.state == TrialState.COMPLETE)
    assert len(done) == n and set(done.values()) == {1}, done
    t = tracker(uri_or_results) if isinstance(uri_or_results, Path) else Tracker(uri_or_results, Path("."))
    runs = t.trial_runs()
    assert not [r for r in runs if r.status == "RUNNING"], [(r.label, r.status) for r in runs]
    finished = Counter(r.key for r in runs if r.status == "FINISHED")
    assert finished == Counter(set(done)), (finished, done)


@pytest.fixture(scope="session")
def pg() -> Any:
    """One throwaway PostgreSQL cluster for the session (skips, saying why, where it cannot start)."""
    server, why = start_postgres()
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    yield server
    server.stop()


__all__ = ["Postgres"]
