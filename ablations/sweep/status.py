"""The read side of a sweep: where each trial stands, from its attempts in the ledger (one set of rules for the
reconciler, `status` and reports; the endings and their retry rules are `ablations.outcomes`), and `study_status`,
which reads a study back without changing anything."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from ablations.config import Host
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.paths import RESULTS, ledger_file
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial, plan_trials
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, Ticket, check_storage, is_journal


@dataclass(frozen=True)
class TrialStatus:
    """Where one trial stands.

    Attributes:
        state: done / running / failed / pending (queued or not yet queued).
        outcome: finished / diverged for a done trial.
        attempts: attempts made so far (counting the running one).
        failures: failed attempts that count toward the retries.
        reason: the last failure's class and reason.
        known: the ledger has an attempt for it.
    """

    trial: Trial
    state: Standing
    outcome: Ending | None = None
    attempts: int = 0
    failures: int = 0
    reason: str = ""
    known: bool = False


def by_key(attempts: Iterable[Attempt]) -> dict[str, list[Attempt]]:
    out: dict[str, list[Attempt]] = {}
    for a in attempts:
        out.setdefault(a.key, []).append(a)
    return out


def classify_attempts(attempts: list[Attempt], max_retries: int) -> Standing:
    """done / running / failed / pending, from one trial's attempts (oldest first) and the retry budget."""
    states = {a.state for a in attempts}
    if TrialState.COMPLETE in states:
        return Standing.DONE
    if TrialState.RUNNING in states:
        return Standing.RUNNING
    if TrialState.WAITING in states:
        return Standing.PENDING
    kinds = [a.kind for a in attempts if a.state == TrialState.FAIL and a.kind is not None]
    if any(k.final for k in kinds) or sum(k.uses_retry for k in kinds) > max_retries:
        return Standing.FAILED
    return Standing.PENDING


def classify(trial: Trial, attempts: list[Attempt], max_retries: int) -> TrialStatus:
    """The trial's status from its attempts (oldest first) and the retry budget."""
    failed = [a for a in attempts if a.state == TrialState.FAIL]
    last = failed[-1] if failed else None
    done = next((a for a in attempts if a.state == TrialState.COMPLETE), None)
    return TrialStatus(
        trial,
        classify_attempts(attempts, max_retries),
        outcome=(done.outcome or Ending.FINISHED) if done else None,
        attempts=len(attempts),
        failures=sum(a.kind is not None and a.kind.uses_retry for a in failed),
        reason=f"{last.kind}: {last.reason}" if last else "",
        known=bool(attempts),
    )


def ticket_of(trial: Trial) -> Ticket:
    """The ticket of a trial's first attempt."""
    return Ticket(
        key=trial.key,
        config=trial.config.model_dump(mode="json"),
        config_hash=trial.config_hash,
        seed=trial.seed,
        label=trial.label,
        factors=trial.factors,
        studies=list(trial.studies),
    )


def statuses(trials: list[Trial], attempts: list[Attempt], max_retries: int) -> list[TrialStatus]:
    grouped = by_key(attempts)
    return [classify(t, grouped.get(t.key, []), max_retries) for t in trials]


def counts(found: Iterable[TrialStatus]) -> Counter[Standing]:
    return Counter(s.state for s in found)


def summary_line(found: Iterable[TrialStatus]) -> str:
    c = counts(found)
    return ", ".join(f"{c.get(k, 0)} {k}" for k in Standing)


def ledger_url(storage: str | None, results: Path) -> str:
    """The ledger's URL: `storage` (`--storage`), else the journal file in the results folder."""
    return storage or str(ledger_file(results))


@dataclass(frozen=True)
class ReadOptions:
    """Where a sweep is read back from (`status`, `report`, `excitation`) and how its trials were spelled."""

    results: Path = RESULTS
    storage: str | None = None  # ledger URL; default: journal file under results
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in results
    overrides: dict[str, Any] = field(default_factory=dict)  # the sweep's `--set` values (they change its trials)
    device: str | None = None  # what `auto` resolved to in the sweep; None = as the ledger recorded it
    max_retries: int = 1  # failed attempts a trial may have before it counts as failed

    @property
    def storage_url(self) -> str:
        return ledger_url(self.storage, self.results)


def study_status(spec: StudySpec, opts: ReadOptions) -> tuple[list[Trial], list[TrialStatus]]:
    """A study's trials and where each stands, read from the ledger without changing it: the read side of
    `status`, `report` and `excitation`.

    `auto` settings resolve as the study's last sweep resolved them (recorded in the ledger), unless
    `opts.device` says otherwise; with no ledger yet, for this host.
    """
    url = opts.storage_url
    check_storage(url)
    if is_journal(url) and not Path(url.removeprefix("journal://")).exists():
        trials = plan_trials(spec, opts.overrides, Host(opts.device) if opts.device else Host.here())  # type: ignore[arg-type]
        return trials, statuses(trials, [], opts.max_retries)
    try:
        ledger = Ledger.open(url, patience=CONNECT_S)
    except OSError as err:  # the ledger on a read-only folder (reading must not need to write): one clear line
        raise SenetError(f"--storage: cannot open the ledger {url} for reading ({err.strerror or err})") from None
    device = opts.device or ledger.note(spec.name).get("device")
    trials = plan_trials(spec, opts.overrides, Host(device) if device else Host.here())
    keys = {t.key for t in trials}
    return trials, statuses(trials, [a for a in ledger.attempts() if a.key in keys], opts.max_retries)
