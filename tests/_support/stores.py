"""Reading back what a sweep left: its ledger, its MLflow store, and the promise every sweep test checks."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from optuna.trial import TrialState

from ablations.outcomes import Ending
from ablations.study.trials import Trial
from ablations.sweep.ledger import Attempt, Ledger, Owner, TrialRecord
from ablations.sweep.status import ticket_of
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


def as_of(trial: Trial, version: int) -> Trial:
    """`trial` as identity `version` keyed it (what a sweep of an earlier release planned)."""
    key = trial.earlier[version]
    return replace(trial, key=key, config_hash=key.split("-s")[0], earlier={})


def complete_as_of(url: str, study: str, trials: list[Trial], version: int, value: float = 10.0) -> list[Trial]:
    """A ledger where each of `trials` was trained (queued, claimed, completed) and recorded under its key of an
    earlier identity `version`, as a sweep of that release left it; returns the trials as they were keyed."""
    ledger = Ledger.open(url)
    old = [as_of(t, version) for t in trials]
    ledger.record_trials(study, [TrialRecord(t.key, t.config_hash, t.seed, version) for t in old])
    for t in old:
        ledger.enqueue(ticket_of(t))
        attempt = ledger.claim({t.key}, Owner.me())
        assert attempt is not None
        ledger.complete(attempt, value, Ending.FINISHED, result={"test_top1_err": value})
    return old
