"""What a sweep asks its workers to do, written once by the sweep and read by every worker it starts.

A manifest names the trials (their tickets, the resolved configurations), the retry budget and the sweep's
MLflow parent run, so a worker can claim, train, record and re-queue on its own: when its controller dies, it
finishes the sweep without it. Secrets never go here: ledger and tracking URLs reach workers by environment.
The exit codes below are the other half of the contract: how a worker tells its controller why it ended.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablations.errors import SenetError
from ablations.paths import sweeps_dir
from ablations.sweep.ticket import Ticket

# How a worker process ends. DONE, RECYCLE, RETIRED and STOPPED are clean; any other code (ERROR, FAILPOINT, a signal,
# an uncaught error) is a death of its slot, and a slot that dies `RESPAWNS` times in a row is given up.
EXIT_DONE = 0  # nothing left for it in the sweep
EXIT_ERROR = 2  # bad input (an unreadable manifest, a store it cannot open): one line on stderr
EXIT_RECYCLE = 3  # replace me with a fresh process (after a failure, `recycle_after` trials or too much memory)
EXIT_RETIRED = 4  # left its GPU when its controller asked (`--trials-per-gpu auto`: the GPU is faster without it)
EXIT_STOPPED = 5  # stopped by SIGTERM or SIGINT
EXIT_FAILPOINT = 86  # died at the point `SENET_ABLATE_FAILPOINT` names (fault tests)


@dataclass(frozen=True)
class Manifest:
    """One sweep's instructions to its workers.

    Attributes:
        study: the study name (MLflow experiment of the trials).
        parent_run: the study's MLflow parent run id.
        tickets: trial key → the ticket of its first attempt (retries copy the last attempt's ticket).
        max_retries: failed attempts (crash, oom) a trial may have before it counts as failed.
        code: git sha and dirty flag, measured once by the sweep.
        recycle_after: trials a worker trains before it is replaced by a fresh process.
        max_rss_mb: resident memory past which a worker is replaced after its trial (None: no limit).
        fail_fast: a worker claims nothing more once a trial of the sweep has failed.
        joiner: written by a joining `worker`, not by the sweep: its reconcile passes queue only trials the ledger
            already knows, and it has an id of its own, so it never replaces the sweep's manifest and its workers
            are never the sweep's (a Ctrl-C of the joiner stops only its own).
    """

    study: str
    parent_run: str | None
    tickets: dict[str, Ticket]
    max_retries: int
    code: dict[str, str] = field(default_factory=dict)
    recycle_after: int = 50
    max_rss_mb: float | None = None
    fail_fast: bool = False
    joiner: bool = False

    @property
    def id(self) -> str:
        """Equal for equal sweeps (same study, same trials, both sweeps or both joiners), so a rerun finds its
        workers; a joiner's differs from its sweep's."""
        blob = json.dumps(
            [self.study, sorted(self.tickets), *(["worker"] if self.joiner else [])], separators=(",", ":")
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def queue_new(self) -> bool:
        """Reconcile passes queue trials the ledger has never seen (a joiner helps a sweep, it never starts one)."""
        return not self.joiner

    @property
    def keys(self) -> set[str]:
        return set(self.tickets)

    def path(self, results: Path) -> Path:
        return sweeps_dir(results) / f"{self.id}.json"

    def write(self, results: Path) -> Path:
        """Write atomically under `results/sweeps/`; returns the path workers are given."""
        path = self.path(results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        data: dict[str, Any] = asdict(self)
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(path)
        return path

    @staticmethod
    def state(path: Path) -> str:
        """Which manifest file is at `path` now (`write` makes a new file each time), "none" when there is none."""
        try:
            stat = path.stat()
        except OSError:
            return "none"
        return f"{stat.st_ino}:{stat.st_mtime_ns}"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            data["tickets"] = {k: Ticket(**v) for k, v in data["tickets"].items()}
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise SenetError(f"--manifest: {path} is not a sweep manifest ({type(err).__name__})") from None
