"""A worker's MLflow writes, buffered on a background thread and retried, so a locked SQLite file or a slow server
delays a trial's logging but never fails the trial (the sweep repairs MLflow from the ledger later); and MLflow's
system metrics sampled into a training run.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator

from ablations.paths import TRACKING_RETRY_ENV, env_seconds

RETRY_S = 300.0  # how long a worker rides out MLflow, unless $SENET_ABLATE_TRACKING_RETRY_S says otherwise


class RunLog:
    """Ordered MLflow writes on a background thread, each retried with back-off for up to `retry_s` seconds.

    A worker hands its per-epoch metrics and text artifacts here and goes on training; `flush` waits until every
    write went through (or gave up), so the summary that follows is written after them. A write that still fails
    after `retry_s` is dropped with a note on stderr: the sweep repairs a trial's MLflow record from its
    `result.json` later, so losing a tracking write never loses the trial.
    """

    def __init__(self, retry_s: float | None = None, log: Callable[[str], None] | None = None) -> None:
        self.retry_s = env_seconds(TRACKING_RETRY_ENV, RETRY_S) if retry_s is None else retry_s
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="mlflow-log")
        self._thread.start()

    def submit(self, write: Callable[[], object]) -> None:
        self._queue.put(write)

    def flush(self) -> None:
        self._queue.join()

    def call(self, write: Callable[[], object]) -> bool:
        """Run `write` now (in order after everything submitted), retrying; True when it went through."""
        self.flush()
        return retry(write, self.retry_s, self._log)

    def _drain(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is not None:
                    retry(write, self.retry_s, self._log)
            finally:
                self._queue.task_done()


def retry(write: Callable[[], object], retry_s: float, log: Callable[[str], None]) -> bool:
    """Call `write` until it succeeds or `retry_s` seconds have passed; False (and a note) when it gave up."""
    delay, deadline = 0.2, time.monotonic() + retry_s
    while True:
        try:
            write()
            return True
        except Exception as err:  # locked SQLite, refused connection, a 5xx from the server
            if time.monotonic() > deadline:
                log(f"tracking: gave up on a write after {retry_s:.0f} s ({type(err).__name__}); repaired later")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@contextlib.contextmanager
def system_metrics(run_id: str | None, uri: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, GPU utilisation) sampled into the run while it trains; a tracking
    store that refuses them costs the trial nothing."""
    monitor = None
    if run_id:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=10, tracking_uri=uri)
            monitor.start()
        except Exception as err:  # psutil or the store unavailable: no system metrics, same training
            print(f"system metrics off: {type(err).__name__}", file=sys.stderr, flush=True)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
