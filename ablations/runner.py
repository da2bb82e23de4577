"""The sweep runner: decide from the ledger what still needs training, run it, and survive being killed.

`sweep` (the controller) expands the study, creates the MLflow store, experiment and parent run before any
worker starts, reconciles the ledger with reality (stale RUNNING trials of dead workers become FAIL in the
ledger and KILLED in MLflow, then are queued again), and keeps `workers` slots busy. Each slot claims a
trial from the ledger and trains it in a fresh process (`ablations.worker`). `worker` joins a running sweep
from another shell or host with the same slot loop. Rerunning the same command resumes: COMPLETE trials never
run again and an interrupted trial continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from ablations.errors import SenetError
from ablations.ledger import Entry, Ledger, is_alive, is_journal, open_storage, storage_url
from ablations.spec import StudySpec, Trial, expand, load_spec
from ablations.tracking import Tracker, tracking_uri
from ablations.worker import EXIT, KIND_BY_EXIT, STORAGE_ENV


@dataclass
class SweepOptions:
    """Where and how a sweep runs (CLI flags)."""

    results: Path = Path("results")
    storage: str | None = None  # ledger URL; default: journal file under results
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in results
    workers: int = 1  # trials at once (CPU), or per GPU list below
    gpus: list[str] = field(default_factory=list)  # CUDA device ids; slots pinned with CUDA_VISIBLE_DEVICES
    trials_per_gpu: int = 1
    max_retries: int = 1  # retries of a failed trial (error or out-of-memory) before it counts as FAIL
    fail_fast: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass
class TrialStatus:
    """Where one trial of a study stands in the ledger."""

    trial: Trial
    state: str  # done / running / failed / pending
    outcome: str = ""  # finished / diverged for done trials
    attempts: int = 0
    reason: str = ""
    known: bool = False  # the ledger has an entry for it (queued, running, failed or done)


def _group(entries: list[Entry]) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in entries:
        out.setdefault(e.key, []).append(e)
    return out


def _failures(entries: list[Entry]) -> list[Entry]:
    """Failed attempts that count against retries. A kill is not the trial's fault, nor is a FAIL without a kind:
    that is Optuna failing a trial whose heartbeat stopped (its host died)."""
    return [e for e in entries if e.state == TrialState.FAIL and e.attrs.get("kind", "killed") != "killed"]


def trial_status(trials: list[Trial], ledger: Ledger, max_retries: int) -> list[TrialStatus]:
    by_key = _group(ledger.entries())
    out = []
    for t in trials:
        entries = by_key.get(t.key, [])
        complete = [e for e in entries if e.state == TrialState.COMPLETE]
        fails = _failures(entries)
        last_fail = fails[-1].attrs if fails else {}
        reason = f"{last_fail.get('kind', '')}: {last_fail.get('reason', '')}" if fails else ""
        known = bool(entries)
        if complete:
            outcome = complete[0].attrs.get("outcome", "finished")
            out.append(TrialStatus(t, "done", outcome, len(fails) + 1, known=known))
        elif any(e.state == TrialState.RUNNING for e in entries):
            out.append(TrialStatus(t, "running", attempts=len(fails) + 1, reason=reason, known=known))
        elif len(fails) > max_retries:
            out.append(TrialStatus(t, "failed", attempts=len(fails), reason=reason, known=known))
        else:
            out.append(TrialStatus(t, "pending", attempts=len(fails), reason=reason, known=known))
    return out


class Sweep:
    """One study's sweep: reconcile, then keep the slots busy until nothing is left to run."""

    def __init__(self, spec: StudySpec, trials: list[Trial], opts: SweepOptions) -> None:
        self.spec, self.trials, self.opts = spec, trials, opts
        self.results = opts.results
        self.uri = tracking_uri(opts.tracking_uri, opts.results)
        self.storage_url = storage_url(opts.storage, opts.results)
        self.stop = threading.Event()
        self.children: dict[int, subprocess.Popen[str]] = {}
        self.failed_hard = False
        self.lock = threading.Lock()

    # -- set-up --------------------------------------------------------------------------------------------------
    def prepare(self, create: bool = True) -> None:
        """Create (or, joining, find) the tracking store, experiment, parent run and ledger before any worker.

        Remote stores are checked first, so a server or database that is down stops us before anything is
        written; then the local folder, the SQLite database (created once, here) and the journal file.
        """
        local_tracking = self.uri.startswith("sqlite:")
        if not local_tracking:
            self.tracker = Tracker(self.uri, self.results)
            self.tracker.check()
        storage = None if is_journal(self.storage_url) else open_storage(self.storage_url)
        check_writable(self.results)
        if local_tracking:
            self.tracker = Tracker(self.uri, self.results)  # a SQLite client creates its database at once
            self.tracker.check()
        self.ledger = Ledger(storage or open_storage(self.storage_url))
        if create:
            self.parent_id = self.tracker.parent_run(self.spec.name, self.spec.description)
            return
        exp = self.tracker.experiment(self.spec.name)
        parent = self.tracker.client.search_runs([exp], "tags.`senet.role` = 'parent'", max_results=1)
        if not parent:
            raise SenetError(f"worker: no sweep of {self.spec.name!r} in {self.uri}; start one with `sweep`")
        self.parent_id = parent[0].info.run_id

    def reconcile(self) -> int:
        """Mark dead RUNNING trials, queue every trial without a COMPLETE result; returns how many are queued."""
        self.ledger.fail_stale()
        entries = self.ledger.entries()
        for e in entries:
            if e.state == TrialState.RUNNING and not is_alive(e, self.ledger.has_heartbeat):
                self.ledger.fail(e.trial_id, {"kind": "killed", "reason": "worker died (stale RUNNING trial)"})
                if e.attrs.get("run_id"):
                    self.tracker.end(e.attrs["run_id"], "KILLED")
        live_runs = {e.attrs.get("run_id") for e in self.ledger.entries() if e.state == TrialState.RUNNING}
        for run in self.tracker.running_trials(self.spec.name):
            if run.info.run_id not in live_runs:
                self.tracker.end(run.info.run_id, "KILLED")
        by_key = _group(self.ledger.entries())
        queued = 0
        for t in self.trials:
            entries = by_key.get(t.key, [])
            states = {e.state for e in entries}
            if states & {TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING}:
                queued += TrialState.WAITING in states
                continue
            fails = _failures(entries)
            if len(fails) > self.opts.max_retries:
                continue
            exclusive = bool(fails) and fails[-1].attrs.get("kind") == "oom"
            self.ledger.enqueue(self.spec.name, self._attrs(t, len(fails) + 1, exclusive))
            queued += 1
        return queued

    def _attrs(self, t: Trial, attempt: int, exclusive: bool) -> dict[str, Any]:
        return {
            "key": t.key,
            "config_hash": t.config_hash,
            "seed": t.seed,
            "label": t.label,
            "factors": t.factors,
            "studies": list(t.studies),
            "config": t.config.model_dump(mode="json"),
            "attempt": attempt,
            "exclusive": exclusive,
        }

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, create: bool = True) -> int:
        """Run until every trial is COMPLETE or out of retries; 0 when all finished, 1 when some failed.

        With `create=False` (a joining worker) the parent run must exist and is left as it is.
        """
        self.prepare(create)
        progress = _Progress(self.opts.progress, len(self.trials))
        with progress:
            while not self.stop.is_set():
                self.reconcile()
                progress.done(self._count_done())
                waiting = [e for e in self.ledger.entries(self.spec.name) if e.state == TrialState.WAITING]
                running = [e for e in self.ledger.entries() if e.state == TrialState.RUNNING]
                if not waiting and not any(e.key in self._keys() for e in running):
                    break
                if not waiting:  # only other processes' trials are running: wait for them
                    time.sleep(2)
                    continue
                self._run_slots(progress)
                if self.opts.fail_fast and self.failed_hard:
                    break
        statuses = trial_status(self.trials, self.ledger, self.opts.max_retries)
        ok = all(s.state == "done" for s in statuses)
        if create:
            self.tracker.finish_parent(self.parent_id, ok)
        self.statuses = statuses
        return 0 if ok else 1

    def _keys(self) -> set[str]:
        return {t.key for t in self.trials}

    def _count_done(self) -> int:
        return sum(s.state == "done" for s in trial_status(self.trials, self.ledger, self.opts.max_retries))

    def _slots(self) -> list[str | None]:
        if self.opts.gpus:
            return [g for g in self.opts.gpus for _ in range(self.opts.trials_per_gpu)]
        return [None] * self.opts.workers

    def _run_slots(self, progress: _Progress) -> None:
        gpu_locks = {g: threading.Semaphore(self.opts.trials_per_gpu) for g in self.opts.gpus}
        threads = [
            threading.Thread(target=self._slot, args=(i, gpu, gpu_locks, progress), daemon=True)
            for i, gpu in enumerate(self._slots())
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)

    def _slot(self, index: int, gpu: str | None, gpu_locks: dict[str, threading.Semaphore], progress: _Progress):
        while not self.stop.is_set():
            entry = self.ledger.claim(self.spec.name)
            if entry is None:
                return
            permits = self.opts.trials_per_gpu if (gpu and entry.attrs.get("exclusive")) else 1
            for _ in range(permits if gpu else 0):
                gpu_locks[gpu].acquire()  # type: ignore[index]
            try:
                code = self._spawn(entry, gpu, progress, index)
            finally:
                for _ in range(permits if gpu else 0):
                    gpu_locks[gpu].release()  # type: ignore[index]
            progress.done(self._count_done())
            if code not in (EXIT["done"], EXIT["killed"]) and self.opts.fail_fast:
                self.failed_hard = True
                self.stop.set()
                self.terminate_children()

    def _spawn(self, entry: Entry, gpu: str | None, progress: _Progress, slot: int) -> int:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif "OMP_NUM_THREADS" not in env:
            # CPU slots share the cores; oversubscribed threads make every step several times slower.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self._slots())))
        env[STORAGE_ENV] = self.storage_url  # not in argv: a database password must not show in `ps`
        cmd = [sys.executable, "-m", "ablations.worker", "--trial-id", str(entry.trial_id), "--study",
               self.spec.name, "--parent-run", self.parent_id, "--tracking-uri", self.uri,
               "--results", str(self.results)]  # fmt: skip
        log_dir = self.results / "runs" / entry.key
        log_dir.mkdir(parents=True, exist_ok=True)
        label = f"{entry.attrs['label']} s{entry.attrs['seed']}"
        task = progress.trial(label)
        with open(log_dir / "worker.log", "a") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
            with self.lock:
                self.children[proc.pid] = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("@@"):
                    progress.update(task, line)
                else:
                    log.write(line)
            code = proc.wait()
            with self.lock:
                self.children.pop(proc.pid, None)
        progress.finish(task)
        if code < 0 or code not in KIND_BY_EXIT:
            # Killed by a signal (or crashed) before it could end its own records: end them here.
            self.ledger.fail(entry.trial_id, {"kind": "killed", "reason": f"worker exited with {code}"})
            run_id = self.ledger.attrs(entry.trial_id).get("run_id")
            if run_id:
                self.tracker.end(run_id, "KILLED")
        return code

    def terminate_children(self) -> None:
        with self.lock:
            procs = list(self.children.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)


class _Progress:
    """Rich progress bars: the overall trials, and each running trial's epochs."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"), transient=False,
            )  # fmt: skip
            self.overall = self.bar.add_task("trials", total=total, note="")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def done(self, n: int) -> None:
        if self.enabled:
            self.bar.update(self.overall, completed=n)

    def trial(self, label: str) -> Any:
        return self.bar.add_task(f"  {label}", total=None, note="") if self.enabled else None

    def update(self, task: Any, line: str) -> None:
        if not self.enabled:
            return
        parts = line.split()
        if parts[0] == "@@start":
            self.bar.update(task, completed=int(parts[1]), total=int(parts[2]))
        elif parts[0] == "@@epoch":
            self.bar.update(task, completed=int(parts[1]), total=int(parts[2]), note=f"val err {parts[3]}%")
        elif parts[0] == "@@fail":
            self.bar.update(task, note=" ".join(parts[1:])[:60])

    def finish(self, task: Any) -> None:
        if self.enabled:
            self.bar.remove_task(task)


def _install_signals(sweep: Sweep) -> None:
    """First Ctrl-C/SIGTERM: stop claiming, let workers mark their runs KILLED; a second one exits at once."""

    def handler(signum: int, _frame: object) -> None:
        if sweep.stop.is_set():
            os._exit(130)
        sweep.stop.set()
        print("\nstopping: running trials are marked KILLED and resume next time (Ctrl-C again to exit now)",
              file=sys.stderr)  # fmt: skip
        sweep.terminate_children()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def sweep(study: str, opts: SweepOptions) -> tuple[int, list[TrialStatus]]:
    """Run a study to completion (or until interrupted). Raises SenetError on bad input before writing anything."""
    spec = load_spec(study)
    trials = expand(spec, opts.overrides)
    s = Sweep(spec, trials, opts)
    _install_signals(s)
    code = s.run()
    if s.stop.is_set() and not s.failed_hard:
        code = 130
    return code, s.statuses


def join(study: str, opts: SweepOptions) -> int:
    """`senet-ablate worker`: help a running sweep until nothing is left to run (re-queueing dead hosts' trials)."""
    spec = load_spec(study)
    s = Sweep(spec, expand(spec, opts.overrides), opts)
    _install_signals(s)
    code = s.run(create=False)
    return 130 if s.stop.is_set() and not s.failed_hard else code


def check_writable(results: Path) -> None:
    """The results folder exists (or is created) and takes a file; else one clear line, nothing written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SenetError(f"--results: {results} is not a writable folder ({err.strerror or err})") from None


def status(study: str, opts: SweepOptions) -> list[TrialStatus]:
    spec = load_spec(study)
    trials = expand(spec, opts.overrides)
    path = storage_url(opts.storage, opts.results)
    if "://" not in path and not Path(path).exists():
        return [TrialStatus(t, "pending") for t in trials]
    return trial_status(trials, Ledger(open_storage(path)), opts.max_retries)


def counts(statuses: list[TrialStatus]) -> Counter[str]:
    return Counter(s.state for s in statuses)
