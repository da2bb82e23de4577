"""Sweeps on a Slurm cluster (`--launcher slurm`): a study's workers submitted as a job array through submitit.

Each array task is one allocation (a node's GPUs, or a share of a node's CPUs) that runs the warm workers of
`ablations.sweep.runner` on it, as `worker` would (`ablations.sweep.slurm_task`): they claim trials from the ledger,
and the task ends when no trial waits for it, so the array never outlives the work. The scheduler allocates,
queues, preempts and requeues; the ledger says how each trial ended, never submitit's result (that may belong to an
earlier run of a requeued job).

A stop the scheduler makes is a stop, not a failure: a preemption, a time limit or a cancel signals the job's
processes (SIGTERM, or submitit's SIGUSR2 `grace_s` before the time limit); each worker checkpoints at its next step
and ends its attempt `stopped`, which uses no retry; submitit requeues a timed-out job and Slurm a preempted one, and
the next task resumes the trial from its checkpoint. A worker killed before it could say so is judged by what Slurm
says of its job (`scheduler_end`): a job that was requeued, preempted, timed out or cancelled ended it `stopped`.

This module holds the launcher's options (CLI over a study's `launcher.slurm` section over the user's profile),
the jobs a study submitted (the ledger's note `<study>#slurm`), what Slurm says of them, submission and cancelling.
Nothing secret is pickled or written into the sbatch script: the ledger and tracking URLs reach the tasks by
environment, which sbatch exports from the submitting process.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablations.config import validation_message
from ablations.errors import SenetError
from ablations.outcomes import Ending

PROFILE_ENV = "SENET_ABLATE_LAUNCHER_PROFILE"  # the per-user launcher profile (default ~/.config/senet-ablate/...)
MAX_ARRAY = 1001  # Slurm's default MaxArraySize: an array's task indices stay below it
NOTE_SUFFIX = "#slurm"  # the ledger note holding a study's submitted jobs
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_MEM = re.compile(r"\d+[KMGT]?B?", re.IGNORECASE)
# Job states in which a job's processes are gone or going, by who ended them (squeue/sacct words).
# (SUSPENDED is none of them: its processes are stopped, not gone, and resume with their leases.)
SCHEDULER_ENDS = {"PREEMPTED", "TIMEOUT", "CANCELLED", "DEADLINE", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                  "PENDING", "RESV_DEL_HOLD", "REVOKED"}  # fmt: skip
HOST_ENDS = {"NODE_FAIL", "BOOT_FAIL"}
JOB_ENDS = {"FAILED", "OUT_OF_MEMORY", "COMPLETED", "SPECIAL_EXIT"}
LIVE = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "SIGNALING",
        "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"}  # fmt: skip


class SlurmOptions(BaseModel):
    """Where and how the array's tasks run. Each task is one node: `gpus_per_node` GPUs (0: a CPU-only task with
    the sweep's `--workers`), `cpus_per_gpu` CPUs each; `total_gpus` (or `nodes`) says how many tasks."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    total_gpus: int | None = Field(None, ge=1, le=100_000)
    nodes: int | None = Field(None, ge=1, le=100_000)
    gpus_per_node: int = Field(1, ge=0, le=64)
    time: str = "60"  # minutes, or Slurm's [D-]HH:MM[:SS]
    cpus_per_gpu: int = Field(4, ge=1, le=512)
    mem: str | None = None  # per node, as sbatch takes it: 32G, 64000M
    array_parallelism: int | None = Field(None, ge=1, le=100_000)
    account: str | None = None
    qos: str | None = None
    grace_s: int = Field(90, ge=10, le=3600)  # SIGUSR2 this long before the time limit: the checkpoint's time
    requeue: bool = True  # requeue after a preemption or time limit (the next run resumes the trials)
    max_requeues: int = Field(20, ge=0, le=1000)  # time limits a task may requeue after (submitit's max_num_timeout)
    slurm: dict[str, str] = {}  # any other sbatch option, KEY=VALUE, e.g. constraint=a100

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        minutes(str(value))
        return str(value)

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEM.fullmatch(str(value)):
            raise ValueError("a size as sbatch takes it, e.g. 32G or 64000M")
        return value

    @property
    def time_min(self) -> int:
        return minutes(self.time)

    def tasks(self, pending: int, per_task: int) -> int:
        """How many array tasks: the GPUs (or nodes) asked for, never more than the `pending` trials need at
        `per_task` trials at once each."""
        if self.nodes is not None:
            wanted = self.nodes
        elif self.total_gpus is not None and self.gpus_per_node:
            wanted = math.ceil(self.total_gpus / self.gpus_per_node)
        else:
            wanted = 1
        return max(0, min(wanted, math.ceil(pending / max(1, per_task))))

    def parameters(self, study: str, cpus: int, nodes: int = 1) -> dict[str, Any]:
        """submitit's `update_parameters` for one task of `cpus` CPUs per node, on one node (an array's task) or
        on `nodes` (a group's allocation: one task per node, and a task that dies ends the others)."""
        extra: dict[str, Any] = {"requeue": True} if self.requeue else {"no-requeue": True}
        extra.update(self.slurm)
        params: dict[str, Any] = {
            "slurm_job_name": f"senet-{study}" + ("-group" if nodes > 1 else ""),
            "nodes": nodes,
            "tasks_per_node": 1,
            "cpus_per_task": cpus,
            "timeout_min": self.time_min,
            "slurm_signal_delay_s": self.grace_s,
            "slurm_additional_parameters": extra,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if nodes > 1:
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        optional = {"slurm_partition": self.partition, "slurm_mem": self.mem, "slurm_account": self.account,
                    "slurm_qos": self.qos, "slurm_array_parallelism": self.array_parallelism}  # fmt: skip
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


def nodes_for(devices: int, gpus_per_node: int) -> int:
    """The nodes a trial of `devices` ranks spans on tasks of `gpus_per_node` GPUs: one while it fits on one (and on
    CPU-only tasks, whose ranks share the task's CPUs), else that many whole nodes (`check_nodes` refused the rest)."""
    if gpus_per_node < 1 or devices <= gpus_per_node:
        return 1
    return math.ceil(devices / gpus_per_node)


def check_nodes(configs: Iterable[tuple[str, int]], gpus_per_node: int) -> None:
    """A trial larger than one node takes whole nodes: refuse, before anything is written, a `train.devices` that
    is no multiple of `--gpus-per-node` (`configs`: each trial's label and devices)."""
    for label, devices in configs:
        if gpus_per_node and devices > gpus_per_node and devices % gpus_per_node:
            raise SenetError(f"train.devices: {devices} is not allowed for {label} with --gpus-per-node "
                             f"{gpus_per_node}: a trial larger than one node takes whole nodes; allowed: "
                             f"1..{gpus_per_node} or a multiple of {gpus_per_node}")  # fmt: skip


def minutes(text: str) -> int:
    """Slurm's time forms (`90`, `1:30:00`, `2-00:00:00`, `45:00`) in whole minutes (at least 1).

    Raises:
        ValueError: anything else, saying what is allowed.
    """
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time; allowed: minutes (90), HH:MM:SS (1:30:00), D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:  # minutes
        total = a * 60
    elif days is None and c is None:  # MM:SS
        total = a * 60 + (b or 0)
    else:  # [D-]HH:MM[:SS]
        total = (days or 0) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if total < 60:
        raise ValueError(f"{text!r} is under a minute; allowed: at least 1 minute")
    return math.ceil(total / 60)


def profile_path() -> Path:
    """`$SENET_ABLATE_LAUNCHER_PROFILE`, else `$XDG_CONFIG_HOME/senet-ablate/launcher.yaml` (~/.config/...)."""
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "senet-ablate" / "launcher.yaml"


def _section(tree: Any, where: str) -> dict[str, Any]:
    if tree is None:
        return {}
    if not isinstance(tree, dict) or not isinstance(tree.get("slurm", {}), dict):
        raise SenetError(f"{where}: expected a mapping `slurm: {{partition: ..., time: ...}}`")
    unknown = sorted(set(tree) - {"slurm"})
    if unknown:
        raise SenetError(f"{where}.{unknown[0]}: unknown launcher; allowed: slurm")
    return dict(tree.get("slurm") or {})


def resolve_options(cli: dict[str, Any], spec_launcher: dict[str, Any], spec_where: str) -> SlurmOptions:
    """The launcher's options: the CLI's (those given) over the study's `launcher.slurm` over the user's profile.

    Raises:
        SenetError: one line naming the file (or option) and the field, and what is allowed.
    """
    path = profile_path()
    layers: list[tuple[str, dict[str, Any]]] = []
    if path.is_file():
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise SenetError(f"{path}: not a readable YAML file ({err.__class__.__name__})") from None
        layers.append((f"{path}: slurm.", _section(tree, str(path))))
    layers.append((f"{spec_where}: launcher.slurm.", _section(spec_launcher or None, f"{spec_where}: launcher")))
    layers.append(("--", {k: v for k, v in cli.items() if v is not None and v != {}}))
    merged: dict[str, Any] = {}
    for prefix, layer in layers:
        try:
            SlurmOptions.model_validate({**merged, **layer})
        except ValidationError as err:
            message = validation_message(err, prefix)
            if prefix == "--":  # an option's name, as typed: --total-gpus
                name, sep, rest = message.partition(":")
                message = name.replace("_", "-") + sep + rest
            raise SenetError(message) from None
        extra = {**merged.get("slurm", {}), **layer.get("slurm", {})}
        merged = {**merged, **layer, "slurm": {str(k): str(v) for k, v in extra.items()}}
    return SlurmOptions.model_validate(merged)


def parse_passthrough(items: Iterable[str]) -> dict[str, str]:
    """`--slurm KEY=VALUE` pairs (any sbatch option, without its dashes)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise SenetError(f"--slurm: {item!r} is not KEY=VALUE with an sbatch option, e.g. --slurm constraint=a100")
        out[key] = value.strip()
    return out


# -- what Slurm says -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobState:
    """One job (an array task `123_4`, or a plain job) as squeue sees it."""

    state: str
    restarts: int


def have_slurm() -> bool:
    return shutil.which("squeue") is not None


def job_states(ids: Iterable[str]) -> dict[str, JobState]:
    """What the controller says of the jobs `ids` (array jobs `123` expand to their tasks `123_0` ...). Jobs it
    no longer knows (past MinJobAge) are absent; without squeue, or when it does not answer, nothing is known."""
    ids = sorted({i.split("_")[0] for i in ids})
    if not ids or not have_slurm():
        return {}
    cmd = ["squeue", "-h", "--states=all", f"--jobs={','.join(ids)}", "-O", "JobArrayID:|,State:|,RestartCnt:|"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    found: dict[str, JobState] = {}
    for line in out.stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 3 and fields[0]:
            found[fields[0]] = JobState(fields[1], int(fields[2]) if fields[2].isdigit() else 0)
    return found


def scheduler_end(job: str, restarts: int, states: dict[str, JobState]) -> tuple[Ending, str] | None:
    """How an attempt whose worker ran in Slurm job `job` (its `restarts`-th run) ended, when Slurm says that run
    is over: `stopped` when the scheduler ended it (preempted, timed out, cancelled, requeued), `lost` when its node
    failed, `crash` when the job itself failed or ended; None while it runs, or when Slurm no longer knows it."""
    found = states.get(job)
    if found is None:
        return None
    if found.restarts > restarts and found.state not in HOST_ENDS:
        return Ending.STOPPED, f"its Slurm job {job} was requeued (run {found.restarts + 1} is {found.state})"
    if found.state in SCHEDULER_ENDS:
        return Ending.STOPPED, f"its Slurm job {job} is {found.state} (the scheduler's, not the trial's)"
    if found.state in HOST_ENDS:
        return Ending.LOST, f"its Slurm job {job} is {found.state}"
    if found.state in JOB_ENDS:
        return Ending.CRASH, f"its Slurm job {job} ended {found.state} while the trial ran"
    return None


def max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`), else Slurm's default."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return MAX_ARRAY
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(m.group(1)) if m else MAX_ARRAY


def chunks(count: int, size: int) -> list[int]:
    """Array sizes for `count` tasks under a cap of `size` per array."""
    size = max(1, size)
    return [min(size, count - i) for i in range(0, count, size)]


def cancel_jobs(ids: Iterable[str]) -> list[str]:
    """scancel the jobs `ids` (only those, by id) that Slurm still runs or queues; returns those it cancelled."""
    ids = sorted(set(ids))
    states = job_states(ids)
    live = sorted({j.split("_")[0] for j, s in states.items() if s.state in LIVE} & {i.split("_")[0] for i in ids})
    if not live:
        return []
    out = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise SenetError(f"scancel {' '.join(live)} failed: {(out.stderr or out.stdout).strip()[:300]}")
    return live


def describe_jobs(ids: list[str], states: dict[str, JobState], trial_of: dict[str, str] | None = None) -> list[str]:
    """One line per submitted job: an array's tasks' states counted (`123: 2 RUNNING, 1 PENDING`); `trial_of`: the
    jobs that are one trial's allocation over several nodes, and that trial's key."""
    lines = []
    for job in ids:
        tasks = {k: s for k, s in states.items() if k.split("_")[0] == job}
        name = f"job {job}" + (f" (trial {trial_of[job]}, several nodes)" if trial_of and job in trial_of else "")
        if not tasks:
            lines.append(f"  {name}: no longer known to Slurm (ended)")
            continue
        counted: dict[str, int] = {}
        for s in tasks.values():
            counted[s.state] = counted.get(s.state, 0) + 1
        restarts = sum(s.restarts for s in tasks.values())
        said = ", ".join(f"{n} {state}" for state, n in sorted(counted.items()))
        lines.append(f"  {name}: {said}" + (f" ({restarts} requeues)" if restarts else ""))
    return lines


def check_partition(partition: str | None) -> None:
    """Refuse, before anything is written, a partition the cluster does not have."""
    if partition is None:
        return
    try:
        out = subprocess.run(["scontrol", "-o", "show", "partition", partition], capture_output=True, text=True,
                             timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        raise SenetError(
            f"--launcher slurm: Slurm's scontrol cannot be run here ({err}); run on a login node"
        ) from None
    if out.returncode != 0:
        names = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30, check=False)
        allowed = ", ".join(sorted(set(names.stdout.split()))) or "see sinfo"
        raise SenetError(f"--partition: {partition!r} is not a partition of this cluster; allowed: {allowed}")
