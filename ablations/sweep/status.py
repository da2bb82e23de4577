"""Where a trial stands, from its attempts in the ledger: one set of rules for the reconciler and `status`.

Every attempt ends with one class:

| class | what happened | retried? |
|---|---|---|
| finished, diverged | a result (the ledger's COMPLETE); a diverged run is a result too | no |
| oom | out of device memory | counts toward `--max-retries`; the next attempt runs alone on its GPU |
| crash | any other error in training, or the worker process died | counts toward `--max-retries` |
| config | a configuration this host cannot run (missing data, a device it lacks) | never: one line, exit 1 |
| stopped | stopped by us (Ctrl-C or SIGTERM to the sweep) | does not count |
| lost | the worker stopped beating (its host died, or it was paused past the grace) | does not count |
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import TrialState

from ablations.outcomes import Ending, Standing
from ablations.study.trials import Trial
from ablations.sweep.ledger import Attempt, Ticket


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
