"""The sweep ledger: which trials are done, queued, running or failed, kept in an Optuna storage.

Each study is an Optuna study whose trials carry our trial identity (`key` = config hash + seed) as user
attributes. The runner decides what to run from the ledger ("every trial without a COMPLETE result", across
all studies in the storage, so shared trials train once), not from a sampler: Optuna's GridSampler re-issues
RUNNING points of dead workers and never retries FAIL ones. Claiming is atomic: a WAITING trial moves to
RUNNING for exactly one worker (the storage's compare-and-set, as `Study.ask` uses it).

The default storage is a `JournalFileBackend` file under the results folder (safe for many processes on one
host); an RDB URL (PostgreSQL) lets many hosts share one sweep.
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ablations.errors import SenetError

optuna.logging.set_verbosity(optuna.logging.WARNING)
# RDB heartbeats are "experimental" since Optuna 2.9 and still the documented way to detect dead workers.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

LEDGER_FILE = "ledger.journal"
T = TypeVar("T")


def storage_url(explicit: str | None, results: Path) -> str:
    return explicit or str(results / LEDGER_FILE)


HEARTBEAT_S = float(os.environ.get("SENET_ABLATE_HEARTBEAT_S", "30"))  # RDB heartbeat period of a running trial
RETRY_S = float(os.environ.get("SENET_ABLATE_DB_RETRY_S", "120"))  # how long to ride out a database outage


def host_name() -> str:
    """This machine's name in the ledger; SENET_ABLATE_HOST overrides it (e.g. containers sharing a hostname)."""
    return os.environ.get("SENET_ABLATE_HOST") or platform.node()


def is_journal(url: str) -> bool:
    return "://" not in url or url.startswith("journal://")


def open_storage(url: str) -> BaseStorage:
    """A journal file for a path (or `journal:///path`), an RDB storage with heartbeats for a database URL.

    A RUNNING trial whose heartbeat is older than 4 periods counts as dead (its host died) and is re-queued by
    whichever controller or worker looks next (`optuna.storages.fail_stale_trials`).
    """
    if is_journal(url):
        path = Path(url.removeprefix("journal://"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SenetError(f"--storage: cannot create {path.parent} ({err.strerror})") from None
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return _retrying(
            lambda: optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=max(1, round(HEARTBEAT_S)),
                grace_period=max(4, round(4 * HEARTBEAT_S)),
            ),
            url,
        )
    except SenetError:
        raise
    except Exception as err:
        raise SenetError(f"--storage: cannot open {redact_url(url)} ({type(err).__name__})") from None


def redact_url(url: str) -> str:
    """The URL without its password, for messages (passwords are never logged)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"


def _transient(err: BaseException) -> bool:
    """A database hiccup worth waiting out (connection refused or dropped, server restarting)."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(err, OperationalError | StorageInternalError) or (
        isinstance(err, DBAPIError) and err.connection_invalidated
    )


def _retrying(fn: Callable[[], T], url: str | None = None) -> T:
    """Call `fn`, retrying transient database errors with back-off for up to RETRY_S seconds."""
    delay, deadline = 0.5, time.monotonic() + RETRY_S
    while True:
        try:
            return fn()
        except Exception as err:
            if not _transient(err):
                raise
            if time.monotonic() > deadline:
                where = redact_url(url) if url else "the ledger database"
                raise SenetError(
                    f"--storage: {where} unreachable for {RETRY_S:.0f} s; rerun the same command to resume"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@dataclass(frozen=True)
class Entry:
    """One ledger trial as the runner sees it."""

    trial_id: int
    study: str
    key: str
    state: TrialState
    attrs: dict[str, Any]
    started: float | None = None  # when it became RUNNING (epoch seconds)


class Ledger:
    """Trial bookkeeping of every study in one storage. Every call rides out a short database outage."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    def _study_id(self, study: str) -> int:
        try:
            return self.storage.get_study_id_from_name(study)
        except KeyError:
            return optuna.create_study(study_name=study, storage=self.storage, load_if_exists=True)._study_id

    def entries(self, study: str | None = None) -> list[Entry]:
        """Ledger trials of one study, or of all of them."""
        return _retrying(lambda: self._entries(study))

    def _entries(self, study: str | None) -> list[Entry]:
        names = [study] if study else [s.study_name for s in self.storage.get_all_studies()]
        out = []
        for name in names:
            sid = self._study_id(name)
            for t in self.storage.get_all_trials(sid, deepcopy=False):
                if "key" in t.user_attrs:
                    started = t.datetime_start.timestamp() if t.datetime_start else None
                    out.append(Entry(t._trial_id, name, t.user_attrs["key"], t.state, dict(t.user_attrs), started))
        return out

    def enqueue(self, study: str, attrs: dict[str, Any]) -> int:
        """Queue a trial (WAITING) carrying `attrs`, which must hold its `key`."""
        return _retrying(lambda: self.storage.create_new_trial(self._study_id(study), template_trial=_waiting(attrs)))

    def claim(self, study: str) -> Entry | None:
        """Atomically take the oldest WAITING trial of `study` for this process, or None when the queue is empty."""
        return _retrying(lambda: self._claim(study))

    def _claim(self, study: str) -> Entry | None:
        sid = self._study_id(study)
        for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            self.take(t._trial_id)
            self.heartbeat(t._trial_id)
            return Entry(t._trial_id, study, t.user_attrs["key"], TrialState.RUNNING, dict(t.user_attrs), time.time())
        return None

    def take(self, trial_id: int) -> None:
        """Record this process as the trial's owner, in one write so that no reader sees half an owner."""
        pid = os.getpid()
        self.set_attrs(trial_id, {"owner": {"host": host_name(), "pid": pid, "start": _process_start(pid)}})

    def attrs(self, trial_id: int) -> dict[str, Any]:
        return _retrying(lambda: dict(self.storage.get_trial(trial_id).user_attrs))

    def set_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            _retrying(lambda k=k, v=v: self.storage.set_trial_user_attr(trial_id, k, v))

    @property
    def has_heartbeat(self) -> bool:
        return isinstance(self.storage, BaseHeartbeat) and bool(self.storage.get_heartbeat_interval())

    def heartbeat(self, trial_id: int) -> None:
        """Tell the ledger this trial's worker is alive: Optuna's heartbeat on RDB, a time-stamp attr on a journal."""
        if self.has_heartbeat:
            _retrying(lambda: self.storage.record_heartbeat(trial_id))  # type: ignore[attr-defined]
        else:
            self.set_attrs(trial_id, {"heartbeat": time.time()})

    def fail_stale(self) -> None:
        """FAIL the RUNNING trials whose heartbeat stopped (their host died), in every study."""
        if not isinstance(self.storage, BaseHeartbeat):
            return
        for summary in _retrying(self.storage.get_all_studies):
            study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
            _retrying(lambda study=study: optuna.storages.fail_stale_trials(study))

    def complete(self, trial_id: int, value: float, attrs: dict[str, Any]) -> None:
        """Final result (finished or diverged); `value` is the final validation error (NaN when diverged)."""
        self.set_attrs(trial_id, attrs)
        _retrying(lambda: self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value]))

    def fail(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Record a failure (kind, reason); the runner re-queues it while retries are left."""
        try:
            self.set_attrs(trial_id, attrs)
            _retrying(lambda: self.storage.set_trial_state_values(trial_id, TrialState.FAIL))
        except UpdateFinishedTrialError:
            pass  # another process already ended it (e.g. the controller marked a stale run)


def _waiting(attrs: dict[str, Any]) -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=attrs)


CLAIM_GRACE_S = 10.0  # a claim writes its owner within milliseconds; an ownerless RUNNING trial older is dead


def is_alive(entry: Entry, rdb_heartbeat: bool) -> bool:
    """Whether the worker holding a RUNNING trial still lives: its pid on this host; elsewhere its heartbeat
    (Optuna's on RDB, which `Ledger.fail_stale` already applied; our time-stamp on a shared journal file).

    A claimer killed between taking the trial and naming itself leaves a RUNNING trial without an owner: alive
    for CLAIM_GRACE_S after it started, dead after.
    """
    owner = entry.attrs.get("owner")
    if owner is None:
        return entry.started is not None and time.time() - entry.started < CLAIM_GRACE_S
    if owner.get("host") == host_name():
        pid = int(owner["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        # A live pid may be a new process that reused the number: compare start times where /proc has them.
        return owner.get("start") is None or _process_start(pid) == owner["start"]
    if rdb_heartbeat:
        return True
    beat = entry.attrs.get("heartbeat")
    return beat is not None and time.time() - float(beat) < 10 * HEARTBEAT_S


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
