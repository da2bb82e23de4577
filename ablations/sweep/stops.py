"""How a sweep worker stops: SIGTERM, SIGINT and SIGUSR2 end its attempt as `stopped` (a checkpoint at the next step
boundary while it trains; SIGUSR2, a Slurm job's notice, never escalates when it comes again), and the fault tests'
failpoints that place a crash, a stop or a hang exactly."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from ablations.sweep.manifest import EXIT_FAILPOINT

PAUSE_GRACE_S = 10  # seconds a stop waits for the training's next step boundary before it is raised where it is
ECHO_S = 1.0  # the same signal again within this is one stop said twice, not a second stop


class Stop(BaseException):
    """SIGTERM, SIGINT or SIGUSR2 from the sweep or the scheduler: the attempt ends as `stopped` (no retry used), its
    run KILLED."""


class Stops:
    """SIGTERM and SIGINT raise `Stop`, except while held: from the claim until the attempt's own handler is in
    place a stop waits, so an attempt this worker holds ends `stopped`, never left RUNNING by a worker that exited
    (which the reconciler would end as a crash, using a retry).

    While a trial trains (`training`), the first stop asks the engine to checkpoint at its next step boundary
    (`pausing`, read by the worker's callback) and then ends the attempt: a preempted or timed-out job loses no more
    than a step. If no step boundary comes within PAUSE_GRACE_S (an evaluation, a step that hangs), or a second stop
    comes, the stop is raised where the process is, as outside training.
    """

    def __init__(self) -> None:
        self.held = False
        self.pending: str | None = None
        self.training = False
        self.pausing: str | None = None  # the stop that asked for a pause
        self.stopped = False  # a stop was raised: the process is ending
        self.paused_at = 0.0  # when the pause was asked (monotonic)

    def handler(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR2 and (self.pending or self.pausing or self.stopped):
            return  # the scheduler's notice (or its supervisor's) said again: never "now"
        if (name == self.pausing or (self.pausing == "SIGUSR2" and signum == signal.SIGTERM)) and (
            time.monotonic() - self.paused_at < ECHO_S
        ):  # the same stop twice at once: Slurm's preemption without a grace time sends SIGTERM twice, and a task's
            return  # relay (SIGUSR2) may reach its worker before the scheduler's own SIGTERM does
        if self.held:
            self.pending = name
            return
        if self.training and self.pausing is None and signum != signal.SIGALRM:
            self.pausing, self.paused_at = name, time.monotonic()
            signal.signal(signal.SIGALRM, self.handler)
            signal.alarm(PAUSE_GRACE_S)
            return
        self.stopped = True
        raise Stop(self.pausing or name)

    @contextlib.contextmanager
    def train(self) -> Iterator[None]:
        """The region where a stop pauses the run at its next step instead of raising at once."""
        self.training, self.pausing = True, None
        try:
            yield
        finally:
            self.training = False
            signal.alarm(0)

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        """Stop waiting; raise the stop that came meanwhile."""
        self.held = False
        if self.pending is not None:
            name, self.pending = self.pending, None
            self.stopped = True
            raise Stop(name)


STOPS = Stops()  # the process's handler (installed by `main`; in-process workers of tests never hold a stop)


def failpoint(name: str) -> None:
    """Die here when `SENET_ABLATE_FAILPOINT` names this point: fault tests place a crash exactly (e.g. between
    the ledger's COMPLETE and MLflow's FINISHED). `NAME:sigterm` instead sends this process a SIGTERM here, a stop
    arriving at exactly that point, and `NAME:hang` blocks here for good (a read that never returns). A no-op
    otherwise."""
    where, _, action = os.environ.get("SENET_ABLATE_FAILPOINT", "").partition(":")
    if where != name:
        return
    if action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the next line of the caller
        return
    if action == "hang":
        threading.Event().wait()
    os._exit(EXIT_FAILPOINT)
