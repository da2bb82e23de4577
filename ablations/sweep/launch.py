"""`sweep --launcher slurm` (and `worker --launcher slurm`): plan and record the study here, on the login node,
submit its workers as Slurm job arrays (`ablations.sweep.slurm`), then follow them from the ledger, or leave
(`--detach`: `status` follows them, `cancel` ends them, a rerun attaches again).

The controller trains nothing and holds no lease: it reconciles (ending attempts whose Slurm job is over, as
the scheduler's stops where the scheduler ended them), shows progress and the jobs' states, and submits another
array when trials wait and none of the study's jobs runs or queues any more (a task leaves when no trial waits for
it; a site that preempts by cancelling leaves trials without a job). Ctrl-C cancels the jobs it submitted, by id, and
waits for their workers' checkpoints.

A trial larger than one node (`train.devices` over `--gpus-per-node`) is its own job of that many nodes, submitted
when it waits and no job of its own runs or queues (`GroupTask`); the arrays leave it alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ablations.config import Host
from ablations.errors import SenetError
from ablations.outcomes import Standing
from ablations.paths import STORAGE_ENV, TRACKING_ENV
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, State, is_local
from ablations.sweep.manifest import Manifest
from ablations.sweep.preflight import check_folders
from ablations.sweep.runner import Sweep, _install_signals
from ablations.sweep.slurm import (
    LIVE,
    NOTE_SUFFIX,
    JobState,
    SlurmOptions,
    cancel_jobs,
    check_nodes,
    check_partition,
    chunks,
    describe_jobs,
    job_states,
    max_array_size,
    nodes_for,
)
from ablations.sweep.slurm_task import ArrayTask, GroupTask, TaskSpec
from ablations.sweep.start import (
    Stores,
    SweepOptions,
    as_joined,
    check_host,
    plan_fetching,
    record,
    requeue_config_failures,
    say,
    say_earlier,
    spec_file,
)
from ablations.sweep.status import TrialStatus, ticket_of
from ablations.tracking import Tag, code_version

RESUBMITS = 3  # arrays in a row that end without progress (no trial settled, no epoch trained) before the controller
# gives up, saying where to look: a task the scheduler stops early (Slurm may send the time limit's signal up to a
# minute early, even during a task's start-up) still counts as progress by the epochs it checkpointed
JOBS_POLL_S = 10.0  # seconds between the controller's questions to Slurm (squeue is the cluster's, not ours)


class JobBook:
    """The jobs a study submitted, in the ledger (note `<study>#slurm`), so that `status`, `cancel` and a rerun
    find them from any host; each controller adds its own."""

    def __init__(self, ledger: Ledger, study: str) -> None:
        self.ledger, self.key = ledger, study + NOTE_SUFFIX

    def ids(self) -> list[str]:
        return [str(j) for j in self.ledger.note(self.key).get("jobs", [])]

    def add(self, ids: list[str], trial: str | None = None) -> None:
        """Record submitted jobs: an array's, or (`trial`) the allocation of one trial larger than a node."""
        note = self.ledger.note(self.key)
        note["jobs"] = [*note.get("jobs", []), *[i for i in ids if i not in note.get("jobs", [])]]
        if trial is not None:
            groups = note.setdefault("groups", {})
            groups[trial] = [*groups.get(trial, []), *ids]
        self.ledger.set_note(self.key, note)

    def jobs(self) -> Jobs:
        """The note, read once."""
        note = self.ledger.note(self.key)
        groups = {k: [str(j) for j in v] for k, v in note.get("groups", {}).items()}
        return Jobs([str(j) for j in note.get("jobs", [])], groups)


@dataclass(frozen=True)
class Jobs:
    """The jobs a study submitted: `ids` all of them, `groups` each trial larger than a node's own."""

    ids: list[str]
    groups: dict[str, list[str]]

    @property
    def trial_of(self) -> dict[str, str]:
        """Each job that is one trial's allocation: that trial's key."""
        return {j: key for key, jobs in self.groups.items() for j in jobs}

    @property
    def arrays(self) -> list[str]:
        return [j for j in self.ids if j not in self.trial_of]


def study_jobs(storage_url: str, study: str) -> list[str]:
    """The Slurm jobs `study` submitted (none without a ledger)."""
    if not Ledger.exists(storage_url):
        return []
    return JobBook(Ledger.open(storage_url, patience=CONNECT_S), study).ids()


def live(ids: list[str], states: dict[str, JobState]) -> list[str]:
    """The tasks of the array jobs `ids` that Slurm still runs or queues."""
    return [k for k, s in states.items() if k.split("_")[0] in ids and s.state in LIVE]


def epochs_trained(attempts: list[Attempt]) -> int:
    """Epochs checkpointed over the trials of `attempts`: each trial's furthest attempt (a resumed attempt starts
    where the last one stopped)."""
    furthest: dict[str, int] = {}
    for a in attempts:
        furthest[a.key] = max(furthest.get(a.key, 0), a.epoch)
    return sum(furthest.values())


class SlurmSweep(Sweep):
    """A sweep whose workers run in Slurm job arrays: the loop of `Sweep`, with submission instead of staffing."""

    def __init__(self, spec: StudySpec, trials: list[Trial], opts: SweepOptions, stores: Stores, manifest: Manifest,
                 slurm: SlurmOptions, task: TaskSpec) -> None:  # fmt: skip
        super().__init__(spec, trials, opts, stores, manifest)
        self.slurm, self.task_spec = slurm, task
        self.book = JobBook(self.ledger, spec.name)
        self.folder = opts.results / "slurm" / spec.name
        self.in_a_row = 0  # arrays submitted since the sweep last made progress
        self.progress_then: tuple[int, int] = (-1, -1)  # (trials settled, epochs trained) at the last submission
        self._states: dict[str, JobState] = {}
        self._asked = -math.inf
        self._said = ""
        self.cancelled: list[str] = []

    def job_states(self, fresh: bool = False) -> dict[str, JobState]:
        if fresh or time.monotonic() - self._asked >= JOBS_POLL_S:
            self._states, self._asked = job_states(self.book.ids()), time.monotonic()
        return self._states

    def nodes(self, trial: Trial) -> int:
        return nodes_for(trial.config.train.devices, self.slurm.gpus_per_node)

    def _staff(self, manifest_path: Path, attempts: list[Attempt]) -> bool:
        """Submit an array when trials of one node wait and no array of the study runs or queues, and a job for each
        waiting trial larger than a node that has none; False after RESUBMITS rounds of them in a row ended
        without progress."""
        states, jobs = self.job_states(), self.book.jobs()
        self._say_jobs(states, jobs)
        small, large = self.waiting(jobs)
        if small and (live(jobs.arrays, states) or live(jobs.arrays, self.job_states(fresh=True))):
            small = 0
        if not small and not large:
            return True
        progress = (sum(s.state.settled for s in self.statuses), epochs_trained(attempts))
        if any(now > then for now, then in zip(progress, self.progress_then, strict=True)):
            self.in_a_row = 0
        if self.in_a_row >= RESUBMITS:
            return False
        if small:
            self.submit(small)
        for trial in large:
            self.submit_group(trial)
        self.in_a_row, self.progress_then = self.in_a_row + 1, progress
        return True

    def waiting(self, jobs: Jobs) -> tuple[int, list[Trial]]:
        """The waiting trials: how many fit on one node (an array's to train), and those larger than a node that no
        job of their own runs or queues for (Slurm asked again before they are submitted)."""
        waiting = [s.trial for s in self.statuses if s.state == Standing.PENDING]
        large = [t for t in waiting if self.nodes(t) > 1 and not live(jobs.groups.get(t.key, []), self.job_states())]
        if large:
            fresh = self.job_states(fresh=True)
            large = [t for t in large if not live(jobs.groups.get(t.key, []), fresh)]
        return sum(self.nodes(t) == 1 for t in waiting), large

    def _why_stranded(self) -> str:
        return (
            f"sweep: {RESUBMITS} Slurm arrays in a row ended without progress (no trial settled, no epoch trained); "
            f"their logs are in {self.folder}"
        )

    def _say_jobs(self, states: dict[str, JobState], jobs: Jobs) -> None:
        ids = [j for j in jobs.ids if j not in self.cancelled]
        lines = "\n".join(describe_jobs(ids, states, jobs.trial_of))
        if lines and lines != self._said:
            self._said = lines
            self.say(f"slurm:\n{lines}")

    def submit(self, waiting: int) -> list[str]:
        """One array (chunked under the cluster's MaxArraySize) of as many tasks as the options and the `waiting`
        trials call for; returns the array job ids."""
        import submitit

        s, t = self.slurm, self.task_spec
        per_task = s.gpus_per_node * (self.opts.trials_per_gpu or 1) if s.gpus_per_node else self.opts.workers
        count = s.tasks(waiting, per_task)
        cpus = s.cpus_per_gpu * (s.gpus_per_node or self.opts.workers)
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=s.max_requeues)  # fmt: skip
        executor.update_parameters(**s.parameters(self.spec.name, cpus))
        ids: list[str] = []
        try:
            for n in chunks(count, max_array_size()):
                jobs = executor.map_array(ArrayTask(t), list(range(n)))
                ids.append(str(jobs[0].job_id).split("_")[0])
        except (subprocess.CalledProcessError, OSError, RuntimeError, ValueError) as err:
            raise SenetError(f"--launcher slurm: sbatch refused the array: {_sbatch_said(err)}") from None
        finally:
            if ids:
                self.book.add(ids)
        each = f"{s.gpus_per_node} GPUs" if s.gpus_per_node else f"{self.opts.workers} CPU workers"
        self.say(f"sweep: submitted {count} Slurm array tasks ({each} each, {s.time_min} min) as job "
                 f"{', '.join(ids)}; their logs are in {self.folder}")  # fmt: skip
        self._asked = -math.inf
        return ids

    def submit_group(self, trial: Trial) -> str:
        """One job of as many nodes as `trial` spans, a task on each, training that trial only; returns its id."""
        import submitit

        s, nodes = self.slurm, self.nodes(trial)
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=s.max_requeues)  # fmt: skip
        executor.update_parameters(**s.parameters(self.spec.name, s.cpus_per_gpu * s.gpus_per_node, nodes))
        try:
            job = str(executor.submit(GroupTask(self.task_spec, trial.key, nodes)).job_id)
        except (subprocess.CalledProcessError, OSError, RuntimeError, ValueError) as err:
            raise SenetError(
                f"--launcher slurm: sbatch refused the job of {trial.label}: {_sbatch_said(err)}"
            ) from None
        self.book.add([job], trial=trial.key)
        self.say(f"sweep: submitted {trial.label} seed {trial.seed} ({trial.config.train.devices} devices) as Slurm "
                 f"job {job} of {nodes} nodes × {s.gpus_per_node} GPUs ({s.time_min} min); its logs are in "
                 f"{self.folder}")  # fmt: skip
        self._asked = -math.inf
        return job

    def terminate(self, again: bool = False) -> None:
        """Cancel the jobs of the study that this controller's book holds, by id (Slurm's SIGTERM reaches their
        workers, which checkpoint and end their attempts `stopped`)."""
        if self.cancelled and not again:
            return
        cancelled = cancel_jobs(self.book.ids())
        self.cancelled = [*self.cancelled, *cancelled]
        if cancelled:
            self.say(f"sweep: cancelled Slurm job {', '.join(cancelled)}")

    def _wind_down(self, stopping: bool, timeout: float = 60.0) -> None:
        """Stopping: cancel the jobs and wait until their workers have ended their attempts (by themselves, or by
        Slurm's word in a reconcile pass). Done: the tasks leave on their own."""
        if not stopping:
            return
        self.terminate()
        deadline = time.monotonic() + self.slurm.grace_s + timeout
        while time.monotonic() < deadline:
            ours = self._reconcile()
            if not any(a.state == State.RUNNING for a in ours):
                return
            time.sleep(1.0)

    def detach(self) -> int:
        """Submit what waits and leave: the jobs run on without the controller."""
        attempts = self._reconcile()
        self.manifest.write(self.results)
        self._repair(attempts)
        self._staff(self.manifest.path(self.results), self._reconcile())
        self.say(f"sweep: detached; follow with `senet-ablate status {self.spec.where}`, stop with "
                 f"`senet-ablate cancel {self.spec.where}`, attach again by rerunning this command")  # fmt: skip
        return 0


def _sbatch_said(err: BaseException) -> str:
    detail = getattr(err, "stderr", None) or getattr(err, "output", None) or err
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    return str(detail).strip()[:300]


def study_ref(spec: StudySpec) -> str:
    """How a task finds the spec again: a shipped study's name, or its file's absolute path."""
    return spec_file(spec) or spec.name


def launch(spec: StudySpec, opts: SweepOptions, slurm: SlurmOptions, detach: bool = False,
           create: bool = True) -> tuple[int, list[TrialStatus]]:  # fmt: skip
    """`sweep --launcher slurm` (create) or `worker --launcher slurm` (more tasks for a sweep that exists).

    Raises:
        SenetError: bad input, an unreachable store, a partition the cluster lacks, no sweep to join, an array
            sbatch refused.
    """
    from ablations.sweep.repair import parent_run

    check_partition(slurm.partition)
    opts = dataclasses.replace(opts, results=opts.results.resolve())
    host = Host("cuda" if slurm.gpus_per_node else "cpu")  # the nodes' device, not the login node's
    if not create:
        opts, host = as_joined(spec, opts, host)
    trials = plan_fetching(spec, opts.overrides, host)
    check_host(trials, host)
    check_folders(trials)
    check_nodes([(t.label, t.config.train.devices) for t in trials], slurm.gpus_per_node)
    manifest = Manifest(spec.name, None, {t.key: ticket_of(t) for t in trials}, opts.max_retries, code_version(),
                        opts.recycle_after, opts.max_rss_mb, opts.fail_fast, joiner=not create)  # fmt: skip
    stores = Stores.open(opts)
    if is_local(opts.storage_url):
        say(f"sweep: the ledger is SQLite ({opts.storage_url}): only tasks on this host can share it; a cluster's "
            "nodes need PostgreSQL (--storage; README: On a Slurm cluster)")  # fmt: skip
    if create:
        parent = parent_run(stores.tracker, stores.ledger, spec.name, spec.description, {Tag.HOST_DEVICE: host.device})
        record(stores.ledger, spec, trials, host, opts.overrides)
        say_earlier(stores.ledger, trials)
        requeue_config_failures(stores.ledger, trials, opts.max_retries, say)
    else:
        parent = stores.ledger.parent(spec.name)
        if parent is None or not {a.key for a in stores.ledger.attempts()} & {t.key for t in trials}:
            raise SenetError(f"worker: no sweep of {spec.name!r} with these settings in the ledger; start one with "
                             "`sweep`")  # fmt: skip
    os.environ[STORAGE_ENV] = opts.storage_url  # sbatch exports them to the tasks: never pickled, never in the script
    os.environ[TRACKING_ENV] = stores.tracker.uri
    task = TaskSpec(study_ref(spec), str(opts.results), dict(opts.overrides), slurm.gpus_per_node,
                    "auto" if opts.trials_per_gpu is None else str(opts.trials_per_gpu), opts.workers,
                    opts.max_retries, opts.recycle_after, opts.max_rss_mb, slurm.grace_s, slurm.requeue)  # fmt: skip
    sweep = SlurmSweep(spec, trials, opts, stores, dataclasses.replace(manifest, parent_run=parent), slurm, task)
    if not create:  # `worker --launcher slurm`: more tasks for the trials that wait, whatever else runs
        sweep._reconcile()
        small, large = sweep.waiting(sweep.book.jobs())
        if small:
            sweep.submit(small)
        for trial in large:
            sweep.submit_group(trial)
    if detach:
        return sweep.detach(), sweep.statuses
    _install_signals(sweep)
    code = sweep.run()
    if create:
        stores.tracker.finish_parent(parent, code == 0)
    return code, sweep.statuses


def cancel(storage_url: str, study: str) -> str:
    """`senet-ablate cancel STUDY`: scancel the study's submitted jobs still running or queued (by id, nothing
    else); returns what to print."""
    ids = study_jobs(storage_url, study)
    if not ids:
        return f"cancel: {study!r} submitted no Slurm jobs (nothing to cancel)"
    done = cancel_jobs(ids)
    if not done:
        return f"cancel: none of {study!r}'s Slurm jobs ({', '.join(ids)}) runs or waits any more"
    return (f"cancel: cancelled Slurm job {', '.join(done)}; their workers checkpoint and end their trials as "
            "stopped (a rerun of the sweep resumes them)")  # fmt: skip


def jobs_lines(storage_url: str, study: str) -> list[str]:
    """`status`: the study's Slurm jobs and their tasks' states (none when it submitted none)."""
    if not Ledger.exists(storage_url):
        return []
    jobs = JobBook(Ledger.open(storage_url, patience=CONNECT_S), study).jobs()
    if not jobs.ids:
        return []
    return ["Slurm jobs:", *describe_jobs(jobs.ids, job_states(jobs.ids), jobs.trial_of)]
