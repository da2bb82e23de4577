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

from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, State, Ticket, pid_alive
from ablations.sweep.status import ReadOptions, by_key, classify_attempts, study_status, ticket_of


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


def queue_again(ledger: Ledger, trials: list[Trial], keys: set[str]) -> list[Trial]:
    """One more attempt, on purpose, for each trial of `keys` whatever its failures (`retry`, and a sweep whose host
    now passes the checks a configuration failure did not); the ticket is the trial as planned now, so settings that
    are not part of its identity (a data folder) are today's. A trial with a live or complete attempt is left as it
    is. Returns the trials queued."""
    grouped = by_key(ledger.attempts())
    chosen = [t for t in trials if t.key in keys]
    tickets = [Ticket(**{**ticket_of(t).to_attrs(), "number": len(grouped.get(t.key, [])) + 1}) for t in chosen]
    return [t for t, queued in zip(chosen, ledger.enqueue_all(tickets), strict=True) if queued is not None]


def retry(spec: StudySpec, opts: ReadOptions, keys: set[str]) -> str:
    """`senet-ablate retry`: one more attempt for the study's failed trials, or for the trials of `keys` (failed or
    pending ones; a done or running trial is refused: it has its result or its attempt); returns what to print.

    Raises:
        SenetError: a key that is not one of the study's trials.
    """
    trials, found = study_status(spec, opts)
    unknown = sorted(keys - {t.key for t in trials})
    if unknown:
        raise SenetError(f"--trial: {unknown[0]} is not a trial of {spec.name!r}; see `senet-ablate status`")
    wanted = [s for s in found if s.trial.key in keys] if keys else [s for s in found if s.state == Standing.FAILED]
    chosen = [s for s in wanted if s.state in (Standing.FAILED, Standing.PENDING)]
    ledger = Ledger.open(opts.storage_url, patience=CONNECT_S)
    queued = {t.key for t in queue_again(ledger, trials, {s.trial.key for s in chosen})}
    hint = f"; `senet-ablate sweep {spec.where}` trains them" if queued else ""
    lines = [f"queued {len(queued)} trials again{hint}"]
    for s in wanted:
        where = f"{s.trial.label} seed {s.trial.seed} [{s.trial.key}]"
        if s.trial.key in queued:
            lines.append(f"  {where} was {s.state}" + (f": {s.reason}" if s.reason else ""))
        else:
            lines.append(f"  not queued: {where} is {s.state}")
    return "\n".join(lines)
