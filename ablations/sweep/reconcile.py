"""The reconciler: ends dead attempts, queues what a sweep still needs, and repairs MLflow from the ledger.

Only one process reconciles a ledger at a time (`Ledger.lock`); others read. Deaths are judged like this:

- an attempt owned by a process this host can see is dead when that process is gone (at once);
- any RUNNING attempt whose heartbeat this observer has not seen change for the ledger's grace (on its own
  monotonic clock, so hosts' wall clocks never meet) is dead: its host died or its worker is paused;
- an ownerless claim seen for the claim grace is a claimer killed between claiming and naming itself.

MLflow follows the ledger: a COMPLETE attempt's run becomes FINISHED (created from `result.json` if the worker
never got to MLflow), any other run of the sweep's trials that is not live ends KILLED with the reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from ablations.config import flatten
from ablations.paths import run_dir
from ablations.sweep.ledger import Attempt, Ledger, Ticket, pid_alive
from ablations.sweep.status import COUNTED, FINAL, by_key, classify_attempts
from ablations.tracking import Tracker, TrialRun, code_tags, environment_tags
from ablations.training.engine import read_result


@dataclass(frozen=True)
class Ended:
    """An attempt a reconcile pass ended, with the class and reason it was given."""

    attempt: Attempt
    kind: str
    reason: str


@dataclass
class _Seen:
    """What this observer last saw of a RUNNING attempt, on its own clock."""

    beat: int
    owned: bool
    since: float = field(default_factory=time.monotonic)


class Reconciler:
    """One process's view of the ledger's liveness, kept across its passes."""

    def __init__(self, ledger: Ledger, log: Callable[[str], None]) -> None:
        self.ledger = ledger
        self.log = log
        self._seen: dict[int, _Seen] = {}

    def verdict(self, a: Attempt) -> tuple[str, str] | None:
        """None while `a` (RUNNING) looks alive, else (failure class, reason) of its end."""
        now, live = time.monotonic(), self.ledger.liveness
        seen = self._seen.get(a.trial_id)
        if seen is None or seen.beat != a.beat or seen.owned != (a.owner is not None):
            seen = self._seen[a.trial_id] = _Seen(a.beat, a.owner is not None, now)
        if a.owner is None:
            if now - seen.since > live.claim_grace_s:
                return "lost", f"claimed but no owner named for {live.claim_grace_s:.0f} s (claimer killed)"
            return None
        if a.owner.is_local() and not pid_alive(a.owner.pid, a.owner.start):
            return "crash", f"worker {a.owner.pid} on {a.owner.host} died mid-trial"
        if now - seen.since > live.grace_s:
            return "lost", f"no heartbeat from {a.owner.host} (pid {a.owner.pid}) for {live.grace_s:.0f} s"
        return None

    def reconcile(
        self, tickets: dict[str, Ticket], max_retries: int, blocking: bool = False, queue_new: bool = True
    ) -> tuple[list[Attempt], list[Ended]]:
        """One pass: end dead attempts and queue the next attempt of every trial of `tickets` that needs one.

        Returns every attempt (as read after the pass) and the attempts this pass ended with their reasons (their
        MLflow runs are for the caller to end, outside the lock). Without the lock (another process holds it and
        `blocking` is off) the pass only reads. With `queue_new` off (a joining worker) only trials the ledger
        already knows are queued again: a joiner helps the sweep it joined, it never starts another.
        """
        ended: list[Ended] = []
        with self.ledger.lock(blocking) as mine:
            attempts = self.ledger.attempts()
            if not mine:
                return attempts, ended
            for a in attempts:
                if a.state != TrialState.RUNNING:
                    self._seen.pop(a.trial_id, None)
                    continue
                verdict = self.verdict(a)
                if verdict is not None and self.ledger.fail(a.trial_id, *verdict):
                    self.log(f"{a.ticket.label} seed {a.ticket.seed}: attempt {a.ticket.number} ended ({verdict[1]})")
                    ended.append(Ended(a, *verdict))
            grouped = by_key(self.ledger.attempts() if ended else attempts)
            queued = False
            for key, first in tickets.items():
                if not queue_new and key not in grouped:
                    continue
                ticket = next_ticket(first, grouped.get(key, []), max_retries)
                if ticket is not None:
                    self.ledger.enqueue(ticket)
                    queued = True
            if queued or ended:
                attempts = self.ledger.attempts()
        return attempts, ended


def next_ticket(first: Ticket, attempts: list[Attempt], max_retries: int) -> Ticket | None:
    """The ticket to queue for a trial that needs an attempt (no result, nothing queued or running, retries and
    no configuration error left); a retry after running out of memory runs alone on its GPU."""
    if classify_attempts(attempts, max_retries) != "pending":
        return None
    if any(a.state == TrialState.WAITING for a in attempts):
        return None
    failed = [a for a in attempts if a.state == TrialState.FAIL]
    exclusive = bool(failed) and failed[-1].kind == "oom"
    base = attempts[-1].ticket if attempts else first
    return Ticket(**{**base.to_attrs(), "number": len(attempts) + 1, "exclusive": exclusive})


def repair(
    tracker: Tracker,
    attempts: Iterable[Attempt],
    keys: set[str],
    results: Path,
    study: str,
    parent_id: str | None,
    code: dict[str, str],
    log: Callable[[str], None],
) -> int:
    """Make MLflow agree with the ledger for `keys`; returns how many runs were changed or created.

    - a COMPLETE attempt's run is FINISHED, with its summary (from `result.json` when the worker died before
      logging it); an attempt with no run gets one, built from `result.json`;
    - a run whose attempt is not RUNNING (ended, superseded, or never recorded) and that is still RUNNING ends
      KILLED, or FAILED for a failure of the trial itself, with the reason in its `ended_by` tag.
    """
    attempts = [a for a in attempts if a.key in keys]
    runs = tracker.trial_runs(keys)
    by_run = {r.run_id: r for r in runs}
    by_attempt_id = {r.tags.get("senet.attempt_id"): r for r in runs}
    changed = 0
    live = {str(a.trial_id) for a in attempts if a.state in (TrialState.RUNNING, TrialState.WAITING)}
    for a in attempts:
        if a.state != TrialState.COMPLETE:
            continue
        run = by_run.get(a.run_id or "") or by_attempt_id.get(str(a.trial_id))
        if run is not None and run.status == "FINISHED" and run.outcome:
            continue
        result = read_result(run_dir(results, a.key))
        if run is None:
            if result is None:
                log(f"repair: {a.key} is COMPLETE but has no run and no result.json; nothing to rebuild from")
                continue
            run_id = tracker.start_trial(
                study, parent_id, _trial_info(a), {**environment_tags("unknown"), **code_tags(code)}
            )
            for m in result.history:
                tracker.log_epoch(run_id, int(m["epoch"]), m)
        else:
            run_id = run.run_id
        if run is None or not run.outcome:
            if result is not None:
                tracker.log_summary(run_id, result.summary, result.status)
            elif a.outcome:
                tracker.log_summary(run_id, {}, a.outcome)
        tracker.end(run_id, "FINISHED")
        changed += 1
    for run in runs:
        attempt_id = run.tags.get("senet.attempt_id")
        if run.status != "RUNNING" or attempt_id in live:
            continue
        ended = next((a for a in attempts if str(a.trial_id) == attempt_id), None)
        if ended is not None and ended.state == TrialState.COMPLETE:
            continue  # handled above
        status, why = _ending(ended)
        tracker.end(run.run_id, status, why)
        changed += 1
    return changed


def _ending(a: Attempt | None) -> tuple[str, str]:
    if a is None:
        return "KILLED", "no live attempt in the ledger (its worker died before recording it)"
    return run_status(a.kind), f"{a.kind or 'ended'}: {a.reason}"


def run_status(kind: str | None) -> str:
    """How an ended attempt's MLflow run ends: FAILED for a failure of the trial, KILLED when it was stopped or
    lost (its trial goes on in another attempt)."""
    return "FAILED" if kind in (*FINAL, *COUNTED) else "KILLED"


def end_runs(tracker: Tracker, ended: list[Ended]) -> None:
    """End the MLflow runs of attempts a reconcile pass ended, with the reason (the final repair retries)."""
    for e in ended:
        if e.attempt.run_id:
            try:
                tracker.end(e.attempt.run_id, run_status(e.kind), f"{e.kind}: {e.reason}")
            except Exception as err:
                print(f"tracking: could not end run {e.attempt.run_id} ({type(err).__name__})", file=sys.stderr)


def _trial_info(a: Attempt) -> dict[str, object]:
    t = a.ticket
    return {"key": t.key, "config_hash": t.config_hash, "seed": t.seed, "label": t.label, "factors": t.factors,
            "attempt": t.number, "attempt_id": a.trial_id, "flat": flatten(t.config)}  # fmt: skip


def stale_runs(runs: Iterable[TrialRun], attempts: Iterable[Attempt]) -> list[TrialRun]:
    """RUNNING runs without a live attempt (for tests and `status`)."""
    live = {str(a.trial_id) for a in attempts if a.state == TrialState.RUNNING}
    return [r for r in runs if r.status == "RUNNING" and r.tags.get("senet.attempt_id") not in live]
