"""Who holds a lease and how liveness is judged: the host and process identities the ledger records in an attempt's
owner (pid namespaces, process start times against pid reuse, the Slurm job), and the liveness settings."""

from __future__ import annotations

import os
import platform
import secrets
from dataclasses import dataclass
from pathlib import Path

from ablations.paths import HEARTBEAT_ENV, env_seconds


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


def slurm_job() -> tuple[str | None, int]:
    """The Slurm job this process runs in (`123_4` for an array task, else the job id; None outside Slurm) and
    which run of it this is (a requeued job runs again under the same id: SLURM_RESTART_COUNT)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return job, int(restarts) if restarts.isdigit() else 0


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
    token: str  # random per process (the lease's fencing token is the attempt's, new at every claim)
    job: str | None = None  # the Slurm job it runs in (`123_4` for an array task), whose end Slurm can tell
    restarts: int = 0  # which run of that job (a requeued job runs again under the same id)

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        job, restarts = slurm_job()
        return cls(platform.node(), host_id(), pid, process_start(pid), secrets.token_hex(4), job, restarts)

    def is_local(self) -> bool:
        return self.host_id == host_id()


@dataclass(frozen=True)
class Liveness:
    """How the ledger tells a live attempt from a dead one; stored in the ledger, the same for every process.

    Attributes:
        heartbeat_s: a running attempt's worker beats this often (seconds).
        grace_s: an attempt whose last beat is older than this by the database's clock is dead: its host died or
            its worker is paused.
        claim_grace_s: an ownerless RUNNING attempt (none is made now: a claim names its owner in the same write;
            an imported ledger may hold one) older than this is dead.
    """

    heartbeat_s: float = 30.0
    grace_s: float = 120.0
    claim_grace_s: float = 10.0

    @classmethod
    def from_env(cls) -> Liveness:
        """The settings a new ledger is created with: `SENET_ABLATE_HEARTBEAT_S` (default 30) and 4 periods."""
        beat = env_seconds(HEARTBEAT_ENV, 30.0)
        return cls(beat, 4 * beat, min(10.0, 4 * beat))
