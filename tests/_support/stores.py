"""Reading back what a sweep left: its ledger, its MLflow store, and the promise every sweep test checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from ablations.sweep.ledger import Attempt, Ledger
from ablations.tracking import Tracker


def local_ledger(results: Path) -> str:
    """The ledger a sweep makes in `results` when no --storage is given."""
    return str(results / "ledger.db")


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
