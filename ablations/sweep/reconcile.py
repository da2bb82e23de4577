"""The reconciler: ends dead attempts and queues what a sweep still needs (`repair` then makes MLflow follow).

Any number of processes may reconcile one ledger at once: every write below is a conditional write of the ledger,
so two passes that judge the same attempt dead end it once, and two that queue the same trial queue it once.
Deaths are judged like this:

- an attempt owned by a process this host can see is dead when that process is gone (at once);
- any RUNNING attempt whose last heartbeat is older than the ledger's grace by the database's clock is dead: its
  host died or its worker is paused (`Ledger.expire`, which compares in the statement that ends it, so a slow or
  paused observer never ends a lease that is being renewed);
- with `slurm` (a supervisor on a Slurm cluster), an attempt whose worker ran in a Slurm job that Slurm says is over
  is dead at once, ended as the scheduler's stop when the scheduler ended the job (`slurm.scheduler_end`); a worker
  found dead on this host while Slurm still runs its job waits for Slurm's word, unless the observer is that job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, State, Ticket, pid_alive, slurm_job
from ablations.sweep.slurm import JobState, have_slurm, job_states, scheduler_end
from ablations.sweep.status import ReadOptions, by_key, classify_attempts, study_status, ticket_of

JOBS_S = 5.0  # seconds between a supervisor's questions to Slurm about its trials' jobs


@dataclass(frozen=True)
class Ended:
    """An attempt a reconcile pass ended, with the ending and reason it was given."""

    attempt: Attempt
    kind: Ending
    reason: str


class Reconciler:
    """Ends dead attempts and queues the next ones; holds nothing between passes but its ledger."""

    def __init__(self, ledger: Ledger, log: Callable[[str], None], slurm: bool = False) -> None:
        self.ledger = ledger
        self.log = log
        self.slurm = slurm and have_slurm()
        self._jobs: tuple[float, set[str], dict[str, JobState]] = (-math.inf, set(), {})

    def _job_states(self, jobs: set[str]) -> dict[str, JobState]:
        """What Slurm says of `jobs`, asked at most every JOBS_S seconds (squeue is the cluster's, not ours)."""
        if not self.slurm or not jobs:
            return {}
        when, asked, states = self._jobs
        if time.monotonic() - when >= JOBS_S or not jobs <= asked:
            states = job_states(jobs)
            self._jobs = (time.monotonic(), jobs, states)
        return states

    def _verdict(self, a: Attempt, jobs: dict[str, JobState]) -> tuple[Ending, str] | None:
        """How a RUNNING attempt ended, if its worker is known to be gone (None: alive, or not known here)."""
        owner = a.owner
        if owner is None:
            return None
        if owner.job is not None and (said := scheduler_end(owner.job, owner.restarts, jobs)) is not None:
            return said
        if not owner.is_local() or pid_alive(owner.pid, owner.start):
            return None
        if owner.job is not None and owner.job in jobs and owner.job != slurm_job()[0]:
            return None  # its job runs on: the scheduler may be ending it, and says so next pass
        return Ending.CRASH, f"worker {owner.pid} on {owner.host} died mid-trial"

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
        running = [a for a in attempts if a.state == State.RUNNING and a.owner is not None]
        jobs = self._job_states({a.owner.job for a in running if a.owner is not None and a.owner.job is not None})
        for a in running:
            verdict = self._verdict(a, jobs)
            if verdict is not None and self.ledger.fail(a, *verdict):
                ended.append(Ended(a, *verdict))
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
