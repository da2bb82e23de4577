"""The reconciler: ends dead attempts and queues what a sweep still needs (`repair` then makes MLflow follow).

Any number of processes may reconcile one ledger at once: every write below is a conditional write of the ledger,
so two passes that judge the same attempt dead end it once, and two that queue the same trial queue it once.
Deaths are judged like this:

- an attempt owned by a process this host can see is dead when that process is gone (at once);
- any RUNNING attempt whose last heartbeat is older than the ledger's grace by the database's clock is dead: its
  host died or its worker is paused (`Ledger.expire`, which compares in the statement that ends it, so a slow or
  paused observer never ends a lease that is being renewed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ablations.outcomes import Ending, Standing
from ablations.sweep.ledger import Attempt, Ledger, State, Ticket, pid_alive
from ablations.sweep.status import by_key, classify_attempts


@dataclass(frozen=True)
class Ended:
    """An attempt a reconcile pass ended, with the ending and reason it was given."""

    attempt: Attempt
    kind: Ending
    reason: str


class Reconciler:
    """Ends dead attempts and queues the next ones; holds nothing between passes but its ledger."""

    def __init__(self, ledger: Ledger, log: Callable[[str], None]) -> None:
        self.ledger = ledger
        self.log = log

    def reconcile(
        self, tickets: dict[str, Ticket], max_retries: int, queue_new: bool = True
    ) -> tuple[list[Attempt], list[Ended]]:
        """One pass: end dead attempts and queue the next attempt of every trial of `tickets` that needs one.

        Returns every attempt (as read after the pass) and the attempts this pass ended with their reasons (their
        MLflow runs are for the caller to end). With `queue_new` off (a joining worker) only trials the ledger
        already knows are queued again: a joiner helps the sweep it joined, it never starts another.
        """
        ended = [Ended(a, Ending.LOST, a.reason) for a in self.ledger.expire()]
        attempts = self.ledger.attempts()
        for a in attempts:
            owner = a.owner
            if a.state == State.RUNNING and owner is not None and owner.is_local():
                reason = f"worker {owner.pid} on {owner.host} died mid-trial"
                if not pid_alive(owner.pid, owner.start) and self.ledger.fail(a, Ending.CRASH, reason):
                    ended.append(Ended(a, Ending.CRASH, reason))
        for e in ended:
            t = e.attempt.ticket
            self.log(f"{t.label} seed {t.seed}: attempt {t.number} ended ({e.reason})")
        grouped = by_key(self.ledger.attempts() if ended else attempts)
        queue = []
        for key, first in tickets.items():
            if not queue_new and key not in grouped:
                continue
            ticket = next_ticket(first, grouped.get(key, []), max_retries)
            if ticket is not None:
                queue.append(ticket)
        if queue:
            self.ledger.enqueue_all(queue)
        if queue or ended:
            attempts = self.ledger.attempts()
        return attempts, ended


def next_ticket(first: Ticket, attempts: list[Attempt], max_retries: int) -> Ticket | None:
    """The ticket to queue for a trial that needs an attempt (no result, nothing queued or running, retries and
    no configuration error left); a retry after running out of memory runs alone on its GPU."""
    if classify_attempts(attempts, max_retries) != Standing.PENDING:
        return None
    if any(a.state == State.WAITING for a in attempts):
        return None
    failed = [a for a in attempts if a.state == State.FAIL]
    exclusive = bool(failed) and failed[-1].kind == Ending.OOM
    base = attempts[-1].ticket if attempts else first
    return Ticket(**{**base.to_attrs(), "number": len(attempts) + 1, "exclusive": exclusive})
