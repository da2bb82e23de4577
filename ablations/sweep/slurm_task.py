"""One task of a Slurm job array (`--launcher slurm`): the warm workers of a sweep on the task's allocation.

submitit pickles an `ArrayTask` and runs it on the node: it joins the study's sweep as `worker` would (its GPUs are
the ones Slurm set in CUDA_VISIBLE_DEVICES, `--trials-per-gpu` applies to them) and returns when no trial waits for
it. What it pickles holds no secret: the ledger and tracking URLs come from the job's environment, exported by
sbatch from the controller's.

Stops: Slurm's SIGTERM (a cancel, a preemption) reaches every process of the job, the workers included, and each
checkpoints at its next step and ends its attempt `stopped`; the task waits for them, and unless the job was
cancelled it requeues itself (a preempted job that exits within its grace time would otherwise end COMPLETED).
Before a time limit submitit catches SIGUSR2 and calls `checkpoint`, which stops the workers the same way (SIGUSR2:
a notice that never escalates), waits for them, and hands submitit the same task to requeue; the next run resumes
the trials.

A trial larger than one node is its own allocation (`GroupTask`, one task per node): the first node's task trains
that trial alone, as an array task would, its group spanning the allocation (`ablations.training.nodes`); the other
nodes' tasks join each group it starts. Stops reach the first task like an array task's; the others' processes
ignore them (submitit requeues from the first task only), and end with the group.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from submitit.helpers import Checkpointable, DelayedSubmission

from ablations.paths import STORAGE_ENV, TRACKING_ENV
from ablations.sweep.ledger import slurm_job
from ablations.sweep.slurm import job_states, nodes_for
from ablations.training.nodes import NODES_ENV, Nodes

if TYPE_CHECKING:
    from ablations.study.trials import Trial

CHECKPOINT_MARGIN_S = 5  # of the grace before the time limit, kept for submitit's requeue after the workers stop


@dataclass(frozen=True)
class TaskSpec:
    """What every task of a study's array needs to join its sweep (no URL: those come by environment)."""

    study: str  # a shipped study's name, or the absolute path of its spec
    results: str  # the shared results folder, absolute
    overrides: dict[str, Any]
    gpus_per_node: int  # 0: a CPU-only task with `workers` slots
    trials_per_gpu: str  # as `--trials-per-gpu` takes it: 1..64 or auto
    workers: int
    max_retries: int
    recycle_after: int
    max_rss_mb: float | None
    grace_s: int
    requeue: bool = True


def requeue_unless_cancelled() -> bool:
    """After a stop that was no cancel (a preemption with a grace time: the job still runs), put the job back in
    the queue, as submitit does after a time limit: a task that merely exited would end COMPLETED, its trials
    waiting for another array. Returns whether it was requeued."""
    job_id = os.environ.get("SLURM_JOB_ID")
    job, _ = slurm_job()
    if not job_id or job is None:
        return False
    state = job_states([job]).get(job)
    if state is not None and state.state != "RUNNING":
        return False  # cancelled (or ending otherwise): not ours to bring back
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=False)
    return out.returncode == 0


class ArrayTask(Checkpointable):
    """The callable submitit runs for each array index (the index itself is not used: tasks claim trials from
    the ledger, so any task trains any trial)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def __call__(self, index: int) -> dict[str, Any]:
        gpus = self.spec.gpus_per_node  # the trials larger than one node wait for their own allocations
        return self._join(index, lambda t: nodes_for(t.config.train.devices, gpus) == 1)

    def _join(self, index: int, keep: Callable[[Trial], bool]) -> dict[str, Any]:
        """Join the study's sweep with this allocation's workers, for the trials `keep` says."""
        from ablations.study.searched import searched
        from ablations.sweep.runner import run
        from ablations.sweep.slots import parse_gpus, parse_per_gpu
        from ablations.sweep.start import SweepOptions
        from ablations.sweep.status import find_spec

        t = self.spec
        storage, uri = os.environ.get(STORAGE_ENV), os.environ.get(TRACKING_ENV)
        if not storage or not uri:
            raise RuntimeError(f"{STORAGE_ENV} and {TRACKING_ENV} must reach the job by environment (sbatch exports "
                               "the submitter's unless the site sets --export=NONE)")  # fmt: skip
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = []
        if t.gpus_per_node and visible:
            gpus = parse_gpus(",".join(str(i) for i in range(len(visible.split(",")))), visible)
        opts = SweepOptions(
            results=Path(t.results),
            storage=storage,
            tracking_uri=uri,
            workers=t.workers,
            gpus=gpus,
            trials_per_gpu=parse_per_gpu(t.trials_per_gpu),
            max_retries=t.max_retries,
            overrides=dict(t.overrides),
            progress=False,
            recycle_after=t.recycle_after,
            max_rss_mb=t.max_rss_mb,
        )
        spec = searched(find_spec(t.study, opts.storage_url), opts.results)  # a search: what its controller asked
        code, found = run(spec, opts, create=False, task=True, keep=keep)
        if code == 130 and t.requeue:
            requeue_unless_cancelled()
        return {"exit": code, "index": index, "settled": sum(s.state.settled for s in found), "trials": len(found)}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit's SIGUSR2 before the time limit (or at a preemption that sends it): stop the workers at their next
        step and wait for them, then requeue this same task."""
        from ablations.sweep.runner import CURRENT

        for sweep in CURRENT:
            sweep.stop.set()
            sweep.terminate()
            deadline = time.monotonic() + max(1, self.spec.grace_s - CHECKPOINT_MARGIN_S)
            while time.monotonic() < deadline and any(p.poll() is None for p in sweep.children.values()):
                time.sleep(0.1)
        return super().checkpoint(*args, **kwargs)


class GroupTask(ArrayTask):
    """The callable submitit runs on each node of a group's allocation: trial `key`, of `nodes` nodes."""

    def __init__(self, spec: TaskSpec, key: str, nodes: int) -> None:
        super().__init__(spec)
        self.key, self.nodes = key, nodes

    def __call__(self, index: int = 0) -> dict[str, Any]:
        from submitit import JobEnvironment

        from ablations.training.ddp import follow_group

        job, restarts = slurm_job()
        nodes = Nodes(Path(self.spec.results) / "slurm" / "groups" / f"{job or 'local'}.{restarts}", self.nodes)
        rank = JobEnvironment().global_rank
        if rank:
            return {"node": rank, "groups": follow_group(nodes, rank)}
        os.environ[NODES_ENV] = nodes.to_env()  # the workers started here span the allocation
        try:
            return {**self._join(index, lambda t: t.key == self.key), "node": 0}
        finally:
            nodes.end()
