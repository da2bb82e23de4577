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

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ablations.errors import SenetError

optuna.logging.set_verbosity(optuna.logging.WARNING)

LEDGER_FILE = "ledger.journal"


def storage_url(explicit: str | None, results: Path) -> str:
    return explicit or str(results / LEDGER_FILE)


def open_storage(url: str) -> BaseStorage:
    """A journal file for a path (or `journal:///path`), an RDB storage for a database URL."""
    if "://" not in url or url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except Exception as err:
        raise SenetError(f"--storage: cannot open {url.split('@')[-1]} ({type(err).__name__})") from None


@dataclass(frozen=True)
class Entry:
    """One ledger trial as the runner sees it."""

    trial_id: int
    study: str
    key: str
    state: TrialState
    attrs: dict[str, Any]


class Ledger:
    """Trial bookkeeping of every study in one storage."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    def _study_id(self, study: str) -> int:
        try:
            return self.storage.get_study_id_from_name(study)
        except KeyError:
            return optuna.create_study(study_name=study, storage=self.storage, load_if_exists=True)._study_id

    def entries(self, study: str | None = None) -> list[Entry]:
        """Ledger trials of one study, or of all of them."""
        names = [study] if study else [s.study_name for s in self.storage.get_all_studies()]
        out = []
        for name in names:
            sid = self._study_id(name)
            for t in self.storage.get_all_trials(sid, deepcopy=False):
                if "key" in t.user_attrs:
                    out.append(Entry(t._trial_id, name, t.user_attrs["key"], t.state, dict(t.user_attrs)))
        return out

    def enqueue(self, study: str, attrs: dict[str, Any]) -> int:
        """Queue a trial (WAITING) carrying `attrs`, which must hold its `key`."""
        sid = self._study_id(study)
        trial_id = self.storage.create_new_trial(sid, template_trial=_waiting(attrs))
        return trial_id

    def claim(self, study: str) -> Entry | None:
        """Atomically take the oldest WAITING trial of `study` for this process, or None when the queue is empty."""
        sid = self._study_id(study)
        for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            self.set_attrs(t._trial_id, {"host": platform.node(), "pid": os.getpid(), "heartbeat": time.time()})
            return Entry(t._trial_id, study, t.user_attrs["key"], TrialState.RUNNING, dict(t.user_attrs))
        return None

    def set_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, v)

    def complete(self, trial_id: int, value: float, attrs: dict[str, Any]) -> None:
        """Final result (finished or diverged); `value` is the final validation error (NaN when diverged)."""
        self.set_attrs(trial_id, attrs)
        self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value])

    def fail(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Record a failure (kind, reason); the runner re-queues it while retries are left."""
        try:
            self.set_attrs(trial_id, attrs)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # another process already ended it (e.g. the controller marked a stale run)


def _waiting(attrs: dict[str, Any]) -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=attrs)


def is_alive(attrs: dict[str, Any], stale_after_s: float) -> bool:
    """Whether the worker holding a RUNNING trial still lives: its pid on this host, its heartbeat elsewhere."""
    if attrs.get("host") == platform.node() and "pid" in attrs:
        try:
            os.kill(int(attrs["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _pid_is_worker(int(attrs["pid"]))
    beat = attrs.get("heartbeat")
    return beat is not None and time.time() - float(beat) < stale_after_s


def _pid_is_worker(pid: int) -> bool:
    """Guard against pid reuse: the live process must still be a senet-ablate worker."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc: trust the pid
    return b"ablations" in cmdline or b"senet-ablate" in cmdline


def finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")
