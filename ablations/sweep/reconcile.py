"""The reconciler: ends dead attempts and queues what a sweep still needs (`repair` then makes MLflow follow).

Only one process reconciles a ledger at a time (`Ledger.lock`); others read. Deaths are judged like this:

- an attempt owned by a process this host can see is dead when that process is gone (at once);
- any RUNNING attempt whose heartbeat this observer has not seen change for the ledger's grace (on its own
  monotonic clock, so hosts' wall clocks never meet) is dead: its host died or its worker is paused;
- an ownerless claim seen for the claim grace is a claimer killed between claiming and naming itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna.trial import TrialState

from ablations.outcomes import Ending, Standing
from ablations.sweep.ledger import Attempt, Ledger, Ticket, pid_alive
from ablations.sweep.status import by_key, classify_attempts


@dataclass(frozen=True)
class Ended:
    """An attempt a reconcile pass ended, with the ending and reason it was given."""

    attempt: Attempt
    kind: Ending
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

    def verdict(self, a: Attempt) -> tuple[Ending, str] | None:
        """None while `a` (RUNNING) looks alive, else (ending, reason) of its end."""
        now, live = time.monotonic(), self.ledger.liveness
        seen = self._seen.get(a.trial_id)
        if seen is None or seen.beat != a.beat or seen.owned != (a.owner is not None):
            seen = self._seen[a.trial_id] = _Seen(a.beat, a.owner is not None, now)
        if a.owner is None:
            if now - seen.since > live.claim_grace_s:
                return Ending.LOST, f"claimed but no owner named for {live.claim_grace_s:.0f} s (claimer killed)"
            return None
        if a.owner.is_local() and not pid_alive(a.owner.pid, a.owner.start):
            return Ending.CRASH, f"worker {a.owner.pid} on {a.owner.host} died mid-trial"
        if now - seen.since > live.grace_s:
            return Ending.LOST, f"no heartbeat from {a.owner.host} (pid {a.owner.pid}) for {live.grace_s:.0f} s"
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
    if classify_attempts(attempts, max_retries) != Standing.PENDING:
        return None
    if any(a.state == TrialState.WAITING for a in attempts):
        return None
    failed = [a for a in attempts if a.state == TrialState.FAIL]
    exclusive = bool(failed) and failed[-1].kind == Ending.OOM
    base = attempts[-1].ticket if attempts else first
    return Ticket(**{**base.to_attrs(), "number": len(attempts) + 1, "exclusive": exclusive})
