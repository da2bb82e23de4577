"""The sweep ledger: every attempt at every trial, in one Optuna storage, the single source of truth of a sweep.

One Optuna study (`senet-ablate-ledger`) holds one Optuna trial per *attempt*; its user attributes carry our
trial identity (`key` = config hash + seed) and the attempt's story. Queues are by trial key, not by study:
any sweep whose trials include a key may claim its waiting attempt, so a trial shared by two studies never
waits in the other study's queue.

An attempt is a lease. A worker claims a WAITING attempt with the storage's compare-and-set (WAITING to
RUNNING succeeds for exactly one claimer), names itself the owner and keeps a heartbeat. The attempt's id is
its fencing token: once a reconciler has ended an attempt (its worker died or paused past the grace), every
later write of the old holder (heartbeat, result, failure) is refused by the storage, and the holder stops
quietly. Only one process reconciles at a time (`Ledger.lock`: a file lock beside a journal, an advisory lock
on PostgreSQL). Liveness settings (heartbeat period, grace) are written into the ledger when it is created and
read from there by every process, so hosts never judge each other by different clocks or settings.

The default storage is a `JournalFileBackend` file under the results folder (many processes on one host); a
PostgreSQL URL lets many hosts share one sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ablations.errors import SenetError
from ablations.outcomes import Ending
from ablations.paths import check_key
from ablations.urls import DATABASES, check_url, redact, scrub, with_driver

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

LEDGER_STUDY = "senet-ablate-ledger"  # the one Optuna study that holds every attempt
FORMAT = 2  # ledger layout; 1 was one Optuna study per senet-ablate study
RETRY_S = float(os.environ.get("SENET_ABLATE_DB_RETRY_S", "120"))  # how long to ride out a database outage
# How long a command waits for the database it was given before saying so: a typo or a server that is down
# should cost the user seconds, not the two minutes a running sweep rides out.
CONNECT_S = min(RETRY_S, 5.0)
T = TypeVar("T")


class LeaseLost(Exception):
    """This process's attempt was ended by someone else (it was judged dead); its writes are refused."""


# -- identities ------------------------------------------------------------------------------------------------


def host_id() -> str:
    """Which processes can see each other's pids: the kernel boot plus the pid namespace.

    Containers that share a hostname have their own pid namespaces, so they get different ids and judge each
    other by heartbeat, never by a pid that means another process in their own namespace.
    `SENET_ABLATE_HOST_ID` overrides it (tests simulate two hosts on one machine with it).
    """
    override = os.environ.get("SENET_ABLATE_HOST_ID")
    if override:
        return override
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return platform.node()
    return f"{platform.node()}/{boot}/{namespace}"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start: int | None) -> bool:
    """Whether `pid` is the same live process (not a zombie, not a new process that reused the number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return start is None
    return state != "Z" and (start is None or process_start(pid) == start)


@dataclass(frozen=True)
class Owner:
    """The process holding an attempt's lease."""

    host: str  # hostname, for people
    host_id: str  # processes with the same host_id can check each other's pids
    pid: int
    start: int | None  # process start time, against pid reuse
    token: str  # random per process

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(platform.node(), host_id(), pid, process_start(pid), secrets.token_hex(4))

    def is_local(self) -> bool:
        return self.host_id == host_id()


@dataclass(frozen=True)
class Liveness:
    """How the ledger tells a live attempt from a dead one; stored in the ledger, the same for every process.

    Attributes:
        heartbeat_s: a running attempt's worker beats this often (seconds).
        grace_s: an attempt whose heartbeat nobody saw change for this long (on the observer's own clock) is
            dead: its host died or its worker is paused.
        claim_grace_s: a claim names its owner within milliseconds; an ownerless RUNNING attempt seen for this
            long is a claimer killed in between.
    """

    heartbeat_s: float = 30.0
    grace_s: float = 120.0
    claim_grace_s: float = 10.0

    @classmethod
    def from_env(cls) -> Liveness:
        """The settings a new ledger is created with: `SENET_ABLATE_HEARTBEAT_S` (default 30) and 4 periods."""
        beat = float(os.environ.get("SENET_ABLATE_HEARTBEAT_S", "30"))
        if not beat > 0:
            raise SenetError(f"SENET_ABLATE_HEARTBEAT_S: {beat} is not allowed; allowed: seconds > 0")
        return cls(beat, 4 * beat, min(10.0, 4 * beat))


# -- attempts --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """What an attempt is for, written when it is queued (the runner <-> worker contract)."""

    key: str
    config: dict[str, Any]  # the resolved RunConfig, JSON
    config_hash: str
    seed: int
    label: str
    factors: dict[str, Any]
    studies: list[str]
    number: int = 1  # attempt number of this trial
    exclusive: bool = False  # run alone on its GPU (after an out-of-memory failure)

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Ticket:
        return cls(**{f.name: attrs[f.name] for f in fields(cls) if f.name in attrs})


@dataclass(frozen=True)
class Attempt:
    """One attempt at one trial, as the ledger holds it.

    Attributes:
        trial_id: the ledger's id of the attempt, also its fencing token.
        state: WAITING (queued), RUNNING (leased), COMPLETE (a result) or FAIL (ended without one).
        ticket: what it trains.
        owner: the lease holder once claimed.
        beat: heartbeat counter; its changes prove the holder alive.
        epoch: epochs done (progress).
        run_id: its MLflow run.
        outcome: finished / diverged for a COMPLETE attempt.
        kind: how a FAIL attempt ended (see `ablations.outcomes`).
        reason: one line on why it failed.
        memory: peak device memory measured on a GPU ({"reserved_mb", "context_mb", "total_mb"}).
    """

    trial_id: int
    state: TrialState
    ticket: Ticket
    owner: Owner | None = None
    beat: int = 0
    epoch: int = 0
    run_id: str | None = None
    outcome: Ending | None = None
    kind: Ending | None = None
    reason: str = ""
    memory: dict[str, float] | None = None

    def __post_init__(self) -> None:  # the storage holds the endings' strings
        for name in ("outcome", "kind"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Ending(getattr(self, name)))

    @property
    def key(self) -> str:
        return self.ticket.key

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> Attempt:
        a = t.user_attrs
        owner = Owner(**a["owner"]) if isinstance(a.get("owner"), dict) else None
        return cls(t._trial_id, t.state, Ticket.from_attrs(a), owner, int(a.get("beat", 0)), int(a.get("epoch", 0)),
                   a.get("run_id"), a.get("outcome"), a.get("kind"), a.get("reason", ""), a.get("memory"))  # fmt: skip


# -- storage ---------------------------------------------------------------------------------------------------


class FileLock:
    """An exclusive `flock` on a file: released by the kernel when its holder dies, so a killed writer never
    leaves a stale lock behind (Optuna's default journal lock waits 30 s for one)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def is_journal(url: str) -> bool:
    return "://" not in url or url.startswith("journal://")


def _journal_path(url: str) -> Path:
    return Path(url.removeprefix("journal://"))


def repair_journal(path: Path, log: Callable[[str], None]) -> None:
    """Drop a torn last record (a writer killed mid-append, a full disk), which would otherwise break every later
    append; a damaged record before the end is not guessed at but reported.

    Runs under the journal's own append lock, so no live writer is mid-record.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    lock = FileLock(f"{path}.flock")
    lock.acquire()
    try:
        data = path.read_bytes()
        end = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        while lines:
            try:
                json.loads(lines[-1])
                break
            except ValueError:
                end -= len(lines.pop()) + 1
        for number, line in enumerate(lines, start=1):
            try:
                json.loads(line)
            except ValueError:
                raise SenetError(f"--storage: {path}: record {number} is damaged; the ledger cannot be read") from None
        if end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            log(f"ledger: dropped a torn last record ({len(data) - end} bytes) of {path}, left by a killed writer")
    finally:
        lock.release()


def _transient(err: BaseException) -> bool:
    """A database hiccup worth waiting out (connection refused or dropped, server restarting)."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(err, OperationalError | StorageInternalError) or (
        isinstance(err, DBAPIError) and err.connection_invalidated
    )


def retrying(fn: Callable[[], T], where: str = "the ledger database", patience: float | None = None) -> T:
    """Call `fn`, retrying transient database errors with back-off for up to `patience` (RETRY_S) seconds."""
    patience = RETRY_S if patience is None else patience
    delay, deadline = 0.5, time.monotonic() + patience
    while True:
        try:
            return fn()
        except Exception as err:
            if not _transient(err):
                raise
            if time.monotonic() > deadline:
                raise SenetError(
                    f"--storage: {where} unreachable for {patience:.0f} s; rerun the same command to resume"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def check_storage(url: str) -> None:
    """Refuse an unknown scheme, or a URL typo that would become a journal file named after the credentials."""
    check_url(url.removeprefix("journal://"), "--storage", DATABASES)


def open_storage(url: str, log: Callable[[str], None] | None = None, patience: float | None = None) -> BaseStorage:
    """A journal file for a path (or `journal:///path`), an RDB storage for a database URL, waited for up to
    `patience` seconds (default RETRY_S; commands starting up give CONNECT_S).

    Raises:
        SenetError: a bad URL, a folder that cannot be created, a database that cannot be opened (password
            redacted), a damaged journal.
    """
    check_storage(url)
    if is_journal(url):
        path = _journal_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SenetError(f"--storage: cannot create {path.parent} ({err.strerror})") from None
        repair_journal(path, log or (lambda s: print(s, file=sys.stderr)))
        # Our own lock file name: Optuna's default symlink lock (`.lock`) would wait 30 s for a stale one.
        return JournalStorage(JournalFileBackend(str(path), lock_obj=FileLock(f"{path}.flock")))  # type: ignore[arg-type]
    driven = with_driver(url, "--storage")
    try:
        return retrying(lambda: RDBStorage(driven, engine_kwargs={"pool_pre_ping": True}), redact(url), patience)
    except SenetError:
        raise
    except ModuleNotFoundError as err:
        raise SenetError(f"--storage: {redact(url)} needs {err.name}; pip install 'senet-ablate[postgres]'") from None
    except Exception as err:
        reason = scrub(str(err).strip().splitlines()[0][:160] if str(err).strip() else "", url)
        raise SenetError(f"--storage: cannot open {redact(url)} ({type(err).__name__}: {reason})") from None


class Ledger:
    """The attempts of every sweep in one storage. Every call rides out a short database outage."""

    def __init__(self, storage: BaseStorage, url: str) -> None:
        self.storage = storage
        self.url = url
        self._sid = retrying(self._ledger_study)
        attrs = retrying(lambda: self.storage.get_study_user_attrs(self._sid))
        if "liveness" not in attrs:
            settings = Liveness.from_env()
            retrying(lambda: self.storage.set_study_user_attr(self._sid, "liveness", asdict(settings)))
            retrying(lambda: self.storage.set_study_user_attr(self._sid, "format", FORMAT))
            attrs = retrying(lambda: self.storage.get_study_user_attrs(self._sid))
        self.liveness = Liveness(**attrs["liveness"])
        self._lock: FileLock | None = None
        self._connection: Any = None

    @classmethod
    def open(cls, url: str, log: Callable[[str], None] | None = None, patience: float | None = None) -> Ledger:
        """The ledger at `url`; a database is waited for up to `patience` seconds (see `open_storage`)."""
        return cls(open_storage(url, log, patience), url)

    def _ledger_study(self) -> int:
        others = [s for s in self.storage.get_all_studies() if s.study_name != LEDGER_STUDY]
        for summary in others:
            trials = self.storage.get_all_trials(summary._study_id, deepcopy=False)
            if any("key" in t.user_attrs for t in trials):
                raise SenetError(
                    f"--storage: {redact(self.url)} is a ledger of senet-ablate 0.1 (one queue per study; its trial "
                    "keys predate identity version 2); give a new --results folder or --storage"
                )
        try:
            return self.storage.get_study_id_from_name(LEDGER_STUDY)
        except KeyError:
            return optuna.create_study(study_name=LEDGER_STUDY, storage=self.storage, load_if_exists=True)._study_id

    # -- reading -------------------------------------------------------------------------------------------
    def attempts(self) -> list[Attempt]:
        """Every attempt, in the order they were queued (one read of the storage)."""
        trials = retrying(lambda: self.storage.get_all_trials(self._sid, deepcopy=False))
        return [Attempt.from_trial(t) for t in trials if "key" in t.user_attrs]

    def attempt(self, trial_id: int) -> Attempt:
        return Attempt.from_trial(retrying(lambda: self.storage.get_trial(trial_id)))

    def note(self, study: str) -> dict[str, Any]:
        """What the last sweep of `study` recorded about itself (e.g. the device `auto` resolved to)."""
        return dict(retrying(lambda: self.storage.get_study_user_attrs(self._sid)).get(f"study:{study}", {}))

    def set_note(self, study: str, note: dict[str, Any]) -> None:
        retrying(lambda: self.storage.set_study_user_attr(self._sid, f"study:{study}", note))

    # -- writing -------------------------------------------------------------------------------------------
    def enqueue(self, ticket: Ticket) -> int:
        """Queue an attempt (WAITING). Call it under `lock()`, after checking the key has no live attempt."""
        check_key(ticket.key)
        template = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=ticket.to_attrs())
        return retrying(lambda: self.storage.create_new_trial(self._sid, template_trial=template))

    def claim(self, keys: set[str], owner: Owner, serves: Callable[[Ticket], bool] = lambda _: True) -> Attempt | None:
        """Atomically take the oldest WAITING attempt of one of `keys` that this worker `serves`, or None."""
        waiting = retrying(lambda: self.storage.get_all_trials(self._sid, deepcopy=False, states=(TrialState.WAITING,)))
        for t in waiting:
            ticket = Ticket.from_attrs(t.user_attrs)
            if ticket.key not in keys or not serves(ticket):
                continue
            try:
                if not retrying(lambda t=t: self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)):
                    continue
            except UpdateFinishedTrialError:
                continue
            try:
                self.update(t._trial_id, owner=asdict(owner), beat=1)
            except LeaseLost:  # judged an ownerless claim and ended before we named ourselves
                continue
            return self.attempt(t._trial_id)
        return None

    def update(self, trial_id: int, **attrs: Any) -> None:
        """Write attributes of an attempt this process holds; LeaseLost if it was ended meanwhile."""
        for k, v in attrs.items():
            self._fenced(lambda k=k, v=v: self.storage.set_trial_user_attr(trial_id, k, v))

    def complete(self, trial_id: int, value: float, outcome: Ending, **attrs: Any) -> None:
        """The attempt's result (finished or diverged); `value` is the final validation error (NaN if diverged)."""
        self.update(trial_id, outcome=Ending(outcome).value, **attrs)
        self._fenced(lambda: self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value]))

    def fail(self, trial_id: int, kind: Ending, reason: str, **attrs: Any) -> bool:
        """End an attempt without a result. False when it had already ended (someone else decided first)."""
        try:
            self.update(trial_id, kind=Ending(kind).value, reason=reason[:500], **attrs)
            self._fenced(lambda: self.storage.set_trial_state_values(trial_id, TrialState.FAIL))
        except LeaseLost:
            return False
        return True

    def _fenced(self, write: Callable[[], object]) -> None:
        try:
            retrying(write)
        except UpdateFinishedTrialError:
            raise LeaseLost from None

    # -- one reconciler at a time --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, blocking: bool = True, timeout: float = 30.0) -> Iterator[bool]:
        """Hold the ledger's reconcile lock; yields False (not holding it) when it is taken and `blocking` is off,
        or still taken after `timeout` seconds (its holder may be paused: the caller goes on reading only).

        A file lock beside a journal or SQLite file; `pg_advisory_lock` on PostgreSQL; `GET_LOCK` on MySQL. The
        kernel or the database frees it when its holder dies.
        """
        deadline = time.monotonic() + (timeout if blocking else 0.0)
        taken = self._take()
        while not taken and time.monotonic() < deadline:
            time.sleep(0.05)
            taken = self._take()
        try:
            yield taken
        finally:
            if taken:
                self._give()

    def _take(self) -> bool:
        """Try once to take the lock, without waiting."""
        if isinstance(self.storage, RDBStorage) and self.storage.engine.name in ("postgresql", "mysql"):
            from sqlalchemy import text

            conn = retrying(self.storage.engine.connect)
            if self.storage.engine.name == "postgresql":
                sql = "SELECT pg_try_advisory_lock(727379)"
            else:
                sql = "SELECT GET_LOCK('senet-ablate-reconcile', 0)"
            got = conn.execute(text(sql)).scalar()
            if got is False or got == 0:
                conn.close()
                return False
            self._connection = conn
            return True
        path = (
            f"{_journal_path(self.url)}.reconcile.lock"
            if is_journal(self.url)
            else f"{self.storage.engine.url.database}.reconcile.lock"  # type: ignore[attr-defined]
        )
        lock = FileLock(path)
        if not lock.acquire(blocking=False):
            return False
        self._lock = lock
        return True

    def _give(self) -> None:
        if self._connection is not None:
            conn, self._connection = self._connection, None
            with contextlib.suppress(Exception):  # a dropped connection has released the lock already
                from sqlalchemy import text

                unlock = "SELECT pg_advisory_unlock(727379)" if conn.engine.name == "postgresql" else (
                    "SELECT RELEASE_LOCK('senet-ablate-reconcile')"
                )  # fmt: skip
                conn.execute(text(unlock))
            with contextlib.suppress(Exception):
                conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
