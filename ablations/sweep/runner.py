"""The sweep controller: decide from the ledger what still needs training, keep warm workers busy on it, and
survive being killed.

`sweep` expands the study, checks the stores before writing anything, starts its first worker, creates the MLflow
parent run, writes the sweep's manifest (which that worker waits for) and repairs MLflow from the ledger; then it
supervises: each pass reconciles the ledger, shows progress, adopts live workers of the same sweep on this host and
starts missing ones, never more than the trials waiting for one (under `--trials-per-gpu auto`, as many per GPU as
`ablations.sweep.packing` plans, asking the workers beyond that to leave after their trial).
The workers claim and train; the controller never trains and never holds a lease, so killing it (kill -9, a
dropped SSH session) loses nothing: its workers finish the sweep, and a rerun adopts them. `worker` joins a
running sweep from another shell or host with the same loop, and so does each task of a Slurm job array (`task`:
`ablations.sweep.slurm_task`), which also leaves as soon as no trial waits for it. Ctrl-C stops the workers cleanly
(their attempts end `stopped`, which uses no retry); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ablations.config import Host
from ablations.errors import SenetError
from ablations.mlflow_names import runs_link
from ablations.outcomes import Standing
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial
from ablations.sweep.ledger import Attempt, State, pid_alive
from ablations.sweep.manifest import EXIT_DONE, EXIT_RECYCLE, EXIT_RETIRED, EXIT_STOPPED, Manifest
from ablations.sweep.packing import RETIRE, Packer
from ablations.sweep.preflight import check_devices_fit, check_folders
from ablations.sweep.progress import Progress
from ablations.sweep.reconcile import Reconciler
from ablations.sweep.repair import end_runs, parent_run, repair
from ablations.sweep.slots import (
    MAX_SLOTS,
    Slot,
    WorkerRecord,
    cpu_threads,
    host_cores,
    live_workers,
    log_path,
    spawn_worker,
    spread,
)
from ablations.sweep.start import (
    FirstWorker,
    Stores,
    SweepOptions,
    as_joined,
    check_host,
    plan_fetching,
    record,
    requeue_config_failures,
    say,
    say_earlier,
)
from ablations.sweep.status import TrialStatus, counts, statuses, ticket_of
from ablations.tracking import Tag, code_version
from ablations.training.nodes import Nodes
from ablations.urls import redact

POLL_S = 1.0  # seconds between the controller's passes
NAP_S = 0.05  # how often the controller looks at its workers' processes between passes
RESPAWNS = 3  # a slot whose worker dies this many times in a row without finishing a trial is given up


class Sweep:
    """One study's sweep on one host: supervise warm workers until every trial is done or out of retries."""

    def __init__(
        self,
        spec: StudySpec,
        trials: list[Trial],
        opts: SweepOptions,
        stores: Stores,
        manifest: Manifest,
        first: FirstWorker | None = None,
        task: bool = False,
    ) -> None:
        self.spec, self.trials, self.opts = spec, trials, opts
        # A Slurm task's workers get the scheduler's signals themselves; its word to them is SIGUSR2, which they take
        # as "checkpoint at the next step" however often it comes (a second SIGTERM would mean "now").
        self.task = task
        self.stop_signal = signal.SIGUSR2 if task else signal.SIGTERM
        self.tracker, self.ledger = stores.tracker, stores.ledger
        self.results = opts.results
        self.manifest = manifest
        self.reconciler = Reconciler(self.ledger, self.say, slurm=True)  # workers in Slurm jobs: ask Slurm too
        self.stop = threading.Event()
        self.children: dict[int, subprocess.Popen[bytes]] = first.children() if first else {}
        self.deaths: dict[int, int] = {}  # slot → worker deaths in a row without a finished trial
        self.given_up: set[int] = set()
        self.told: set[int] = set()  # workers sent their SIGTERM (`terminate`)
        auto = bool(opts.gpus) and opts.trials_per_gpu is None
        self.packer = Packer(self.results, manifest.id, opts.gpus, host_cores()) if auto else None
        self.leaving: set[int] = set()  # pids of the workers asked to leave their GPU after their trial
        self.failed_fast = False
        self.statuses: list[TrialStatus] = []

    def say(self, text: str) -> None:
        say(text)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """0 when every trial is done (diverged counts), 1 when some failed, 130 when stopped."""
        attempts = self._reconcile()  # the trials queued before the first worker reads the manifest
        manifest_path = self.manifest.write(self.results)
        self._repair(attempts)
        self.say(self._banner())
        with Progress(self.opts.progress, self.trials, self.results) as progress:
            while not self.stop.is_set():
                ours = self._reconcile()  # end dead attempts, queue what is missing; where our trials stand
                self._show_progress(progress, ours)
                if self._settled():  # every trial done or failed (or one failed, under --fail-fast)
                    break
                if not self._staff(manifest_path, ours) and self._stranded(ours):  # every slot given up, none runs
                    break
                if self.task and self._idle(ours):  # a Slurm task leaves when no trial waits for it
                    break
                self._nap()
            self._wind_down(stopping=self.stop.is_set() or self.failed_fast)
            ours = self._take_stock(self.ledger.attempts())
            self._show_progress(progress, ours)  # the lines of the trials that ended while winding down
            progress.closing(self.spec.name, counts(self.statuses))
            if self.tracker.remote:  # a tracking server: the study's runs are one click away
                experiment = self.tracker.experiment(self.spec.name, create=False)
                if experiment is not None:
                    progress.say(f"runs: {runs_link(redact(self.tracker.uri), experiment)}")
        self._repair(ours)
        if self.stop.is_set():
            return 130
        return 0 if all(s.state == Standing.DONE for s in self.statuses) else 1

    def _reconcile(self) -> list[Attempt]:
        """A reconcile pass and the MLflow runs of the attempts it ended; returns our trials' attempts."""
        manifest = self.manifest
        attempts, ended = self.reconciler.reconcile(manifest.tickets, self.opts.max_retries, manifest.queue_new)
        end_runs(self.tracker, ended)
        return self._take_stock(attempts)

    def _take_stock(self, attempts: list[Attempt]) -> list[Attempt]:
        """Where each of our trials stands (`statuses`), from the ledger's attempts; returns our trials' attempts."""
        ours = [a for a in attempts if a.key in self.manifest.keys]
        self.statuses = statuses(self.trials, ours, self.opts.max_retries)
        return ours

    def _show_progress(self, progress: Progress, attempts: list[Attempt]) -> None:
        again = {s.trial.key: s.state != Standing.FAILED for s in self.statuses}
        progress.show(sum(s.state.settled for s in self.statuses), attempts, again)

    def _banner(self) -> str:
        """The sweep's first line: its trials, where they stand, who trains them, and where everything goes."""
        c = counts(self.statuses)
        who = "Slurm task" if self.task else "worker" if self.manifest.joiner else "sweep"
        if self.opts.gpus:
            per = "auto" if self.opts.trials_per_gpu is None else self.opts.trials_per_gpu
            slots = f"GPUs {','.join(self.opts.gpus)} ({per} per GPU)"
        else:
            slots = f"{self.opts.workers} CPU worker{'s' * (self.opts.workers > 1)}"
        return (f"{who} {self.spec.name}: {len(self.trials)} trials ({c.get(Standing.DONE, 0)} done, "
                f"{c.get(Standing.FAILED, 0)} failed, {c.get(Standing.PENDING, 0) + c.get(Standing.RUNNING, 0)} to "
                f"train) on {slots}\n  results {self.results} · MLflow {redact(self.tracker.uri)} · ledger "
                f"{redact(self.opts.storage_url)}")  # fmt: skip

    def _nap(self) -> None:
        """Wait `POLL_S` for the next pass, or less: a worker that exits (the last trial's, at the sweep's end) wakes
        the controller at once."""
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline and not self.stop.is_set():
            if any(proc.poll() is not None for proc in self.children.values()):
                return
            time.sleep(NAP_S)

    def _settled(self) -> bool:
        """Every trial is done or failed, or one failed under --fail-fast (which winds the sweep down)."""
        if all(s.state.settled for s in self.statuses):
            return True
        if self.opts.fail_fast and any(s.state == Standing.FAILED for s in self.statuses):
            self.failed_fast = True
            return True
        return False

    def _idle(self, attempts: list[Attempt]) -> bool:
        """No trial waits and none of our workers lives: the allocation has nothing left to do here."""
        return not self.children and not any(a.state == State.WAITING for a in attempts)

    def _stranded(self, attempts: list[Attempt]) -> bool:
        """With every slot given up: nothing runs any more either, so the sweep cannot go on (and says why)."""
        if any(a.state == State.RUNNING for a in attempts):
            return False
        self.say(self._why_stranded())
        return True

    def _why_stranded(self) -> str:
        return (f"sweep: every worker slot died {RESPAWNS} times in a row before finishing a trial; "
                f"see {log_path(self.results, self.manifest.id, Slot(0))}")  # fmt: skip

    def _repair(self, attempts: list[Attempt]) -> None:
        m = self.manifest
        repair(
            self.tracker, self.ledger, attempts, m.keys, self.results, self.spec.name, m.parent_run, m.code, self.say
        )

    # -- workers ------------------------------------------------------------------------------------------------
    def _slots(self, attempts: list[Attempt], live: list[WorkerRecord], pids: set[int]) -> list[Slot]:
        """The slots to staff: fixed ones, or under `auto` each GPU's first slots, as many as the packer plans."""
        if self.packer is None:
            return self.opts.slots()
        pending = {s.trial.config_hash for s in self.statuses if s.state in (Standing.PENDING, Standing.RUNNING)}
        plan = self.packer.plan(live, attempts, pending, self._work(attempts, pids))
        self._retire(self.packer, plan.retire)
        host = tuple(self.opts.gpus)
        return [Slot(i * MAX_SLOTS + j, g, packed=True, host=host) for i, g in enumerate(self.opts.gpus)
                for j in range(plan.workers[g])]  # fmt: skip

    def _retire(self, packer: Packer, leaving: dict[str, list[WorkerRecord]]) -> None:
        """Ask the workers `leaving` each GPU to leave it after their trial (once each), saying why."""
        for gpu, workers in leaving.items():
            for w in workers:
                if w.pid in self.leaving:
                    continue
                self.leaving.add(w.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, RETIRE)
                self.say(f"sweep: the worker of slot {w.slot} leaves GPU {gpu} after its trial (--trials-per-gpu "
                         f"auto: {packer.story(gpu)})")  # fmt: skip

    def _staff(self, manifest_path: Path, attempts: list[Attempt]) -> bool:
        """Adopt live workers, start the missing ones where there is work; False when every slot was given up."""
        for index, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[index]
            finished = any(a.owner is not None and a.owner.pid == proc.pid and a.state == State.COMPLETE
                           for a in attempts)  # fmt: skip
            if code in (EXIT_DONE, EXIT_RECYCLE, EXIT_RETIRED, EXIT_STOPPED) or finished:
                self.deaths[index] = 0
            else:
                self.deaths[index] = self.deaths.get(index, 0) + 1
                if self.deaths[index] >= RESPAWNS:
                    self.given_up.add(index)
        live = live_workers(self.results, self.manifest.id)
        pids = {p.pid for p in self.children.values()} | {w.pid for w in live}
        staffed = set(self.children) | {w.slot for w in live}
        slots = self._slots(attempts, live, pids)
        wanted = min(len(slots), self._work(attempts, pids))
        staying = len(staffed - {w.slot for w in live if w.pid in self.leaving})
        free = self._free(attempts, pids)
        for slot in spread(slots):
            if staying >= wanted or free <= 0:  # never more workers than trials for them
                break
            if slot.index in staffed or slot.index in self.given_up:
                continue
            self.children[slot.index] = self._spawn(slot, manifest_path, wanted)
            staffed.add(slot.index)
            staying, free = staying + 1, free - 1
        return len(self.given_up) < len(slots)

    def _free(self, attempts: list[Attempt], pids: set[int]) -> int:
        """Trials waiting that none of our workers is about to claim: those waiting, less our workers (`pids`) that
        train nothing (starting, or between two trials)."""
        waiting = sum(a.state == State.WAITING for a in attempts)
        training = {a.owner.pid for a in attempts if a.state == State.RUNNING and a.owner is not None
                    and a.owner.is_local()}  # fmt: skip
        return waiting - len(pids - training)

    def _work(self, attempts: list[Attempt], pids: set[int]) -> int:
        """Trials that need one of our workers: those still to train, and those our own workers are training
        (a trial another host's worker trains needs none of ours)."""
        pending = sum(s.state == Standing.PENDING for s in self.statuses)
        training = sum(a.state == State.RUNNING and a.owner is not None and a.owner.is_local()
                       and a.owner.pid in pids for a in attempts)  # fmt: skip
        return pending + training

    def _spawn(self, slot: Slot, manifest_path: Path, slots: int) -> subprocess.Popen[bytes]:
        stores = (self.opts.storage_url, self.tracker.uri)
        return spawn_worker(self.results, manifest_path, self.manifest.id, slot, cpu_threads(slots), stores, None)

    def terminate(self, again: bool = False) -> None:
        """SIGTERM to every worker of this sweep on this host (ours and adopted; a joiner's manifest has its own id,
        so a joiner's are never the sweep's): they end their attempts as `stopped` and their runs KILLED. Each worker
        is told once (a training worker takes a second stop as "now", skipping its checkpoint at the next step),
        unless `again`: the wind-down's last word to workers that outlived it."""
        pids = {p.pid for p in self.children.values()} | {w.pid for w in live_workers(self.results, self.manifest.id)}
        for pid in pids if again else pids - self.told:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self.stop_signal)
        self.told |= pids

    def _wind_down(self, stopping: bool, timeout: float = 60.0) -> None:
        """Stopping: terminate the workers and wait for them. Done: let ours see that nothing is left and exit."""
        if stopping:
            self.terminate()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, proc in list(self.children.items()):
                if proc.poll() is not None:
                    del self.children[index]
            alive = [w for w in live_workers(self.results, self.manifest.id) if pid_alive(w.pid, w.start)]
            if not self.children and (not stopping or not alive):
                return
            time.sleep(NAP_S)
        self.terminate(again=True)


CURRENT: list[Sweep] = []  # the sweep this process supervises (a Slurm task's checkpoint stops it)


def _install_signals(sweep: Sweep) -> None:
    """First Ctrl-C/SIGTERM: stop the workers cleanly; a second one exits at once (in a Slurm task, the scheduler's
    kill follows its signals anyway: the task waits for its workers' checkpoints until then)."""

    def handler(signum: int, _frame: object) -> None:
        if sweep.stop.is_set():
            if sweep.task:
                return
            os._exit(130)
        sweep.stop.set()
        sweep.say("\nstopping: running trials end as stopped and resume next time (Ctrl-C again to exit now)")
        sweep.terminate()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(spec: StudySpec, opts: SweepOptions, create: bool = True, task: bool = False,
        keep: Callable[[Trial], bool] | None = None) -> tuple[int, list[TrialStatus]]:  # fmt: skip
    """`sweep` (create=True) and `worker` (create=False: join a sweep whose parent run exists) of a loaded study;
    `task`: a Slurm task's join, which leaves when no trial waits for it; `keep`: the trials it trains (a Slurm
    array task leaves the groups larger than its node to their own allocations, and such an allocation trains
    its trial only).

    Raises:
        SenetError: bad input, an unreachable store, no sweep to join; before anything is written.
    """
    host = planning = Host.here()
    if not create:
        opts, planning = as_joined(spec, opts, host)
    trials = plan_fetching(spec, opts.overrides, planning)
    if keep is not None:
        trials = [t for t in trials if keep(t)]
    check_host(trials, host)
    check_folders(trials)
    if host.device == "cuda":
        import torch

        nodes = Nodes.from_env()  # the first node of a group's allocation: the whole allocation's GPUs
        here = len(opts.gpus) or torch.cuda.device_count()
        check_devices_fit(trials, here * (nodes.count if nodes else 1), "this host's sweep")
    manifest = Manifest(spec.name, None, {t.key: ticket_of(t) for t in trials}, opts.max_retries, code_version(),
                        opts.recycle_after, opts.max_rss_mb, opts.fail_fast, joiner=not create)  # fmt: skip
    first = FirstWorker(opts, trials, manifest) if create else None
    try:
        stores = Stores.open(opts, first)
        if create:
            parent = parent_run(stores.tracker, stores.ledger, spec.name, spec.description,
                                {Tag.HOST_DEVICE: host.device})  # fmt: skip
            record(stores.ledger, spec, trials, host, opts.overrides)
            say_earlier(stores.ledger, trials)
            requeue_config_failures(stores.ledger, trials, opts.max_retries, say)
        else:
            parent = stores.ledger.parent(spec.name) or stores.tracker.find_parent(spec.name)
            known = {a.key for a in stores.ledger.attempts()}
            if parent is None or not known & {t.key for t in trials}:
                raise SenetError(
                    f"worker: no sweep of {spec.name!r} with these settings in the ledger ({len(trials)} trials, "
                    "none queued or run); start one with `sweep`, or give `worker` the sweep's own --set"
                )
            trials = [t for t in trials if t.key in known]  # what the ledger holds (a search records batch by batch)
            manifest = dataclasses.replace(manifest, tickets={t.key: manifest.tickets[t.key] for t in trials})
        manifest = dataclasses.replace(manifest, parent_run=parent)
        sweep = Sweep(spec, trials, opts, stores, manifest, first, task)
    except BaseException:
        if first is not None:
            first.cancel()
        raise
    _install_signals(sweep)
    CURRENT[:] = [sweep]
    try:
        code = sweep.run()
    finally:
        CURRENT.clear()
    if create:
        stores.tracker.finish_parent(parent, code == 0)
    return code, sweep.statuses
