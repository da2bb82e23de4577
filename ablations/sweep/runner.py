"""The sweep controller: decide from the ledger what still needs training, keep warm workers busy on it, and
survive being killed.

`sweep` expands the study, checks the stores before writing anything, creates the MLflow parent run, writes the
sweep's manifest and repairs MLflow from the ledger; then it supervises: each pass reconciles the ledger (if no
other process is), shows progress, adopts live workers of the same sweep on this host and starts missing ones.
The workers claim and train; the controller never trains and never holds a lease, so killing it (kill -9, a
dropped SSH session) loses nothing: its workers finish the sweep, and a rerun adopts them. `worker` joins a
running sweep from another shell or host with the same loop. Ctrl-C stops the workers cleanly (their attempts
end `stopped`, which uses no retry); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.config import IDENTITY_VERSION, Host
from ablations.data.readers import download
from ablations.datafiles import MissingData, download_root
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.paths import RESULTS, STORAGE_ENV, TRACKING_ENV
from ablations.study.load import STUDIES
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial, plan_trials
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, State, TrialRecord, check_storage, is_local, pid_alive
from ablations.sweep.manifest import EXIT_DONE, EXIT_RECYCLE, EXIT_STOPPED, Manifest
from ablations.sweep.progress import Progress
from ablations.sweep.reconcile import Reconciler, queue_again
from ablations.sweep.repair import end_runs, parent_run, repair
from ablations.sweep.slots import Slot, auto_per_gpu, cpu_threads, live_workers, log_path, worker_env
from ablations.sweep.status import TrialStatus, by_key, earlier_result, ledger_url, statuses, ticket_of
from ablations.tracking import Tag, Tracker, code_version, tracking_uri

POLL_S = 1.0  # seconds between the controller's passes
RESPAWNS = 3  # a slot whose worker dies this many times in a row without finishing a trial is given up


@dataclass
class SweepOptions:
    """Where and how a sweep runs (CLI flags)."""

    results: Path = RESULTS
    storage: str | None = None  # ledger URL; default: ledger.db under results
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in results
    workers: int = 1  # CPU slots (one warm worker each)
    gpus: list[str] = field(default_factory=list)  # CUDA devices; slots pinned with CUDA_VISIBLE_DEVICES
    trials_per_gpu: int | None = 1  # slots per GPU; None = auto (measure, then pack)
    max_retries: int = 1  # failed attempts (crash, oom) a trial may have before it counts as failed
    fail_fast: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    recycle_after: int = 50  # trials per worker process before it is replaced (1 = a fresh process per trial)
    max_rss_mb: float | None = None  # a worker past this resident memory is replaced after its trial

    @property
    def storage_url(self) -> str:
        return ledger_url(self.storage, self.results)

    def slots(self) -> list[Slot]:
        if self.gpus:
            per = self.trials_per_gpu or 1
            return [Slot(i * per + j, g) for i, g in enumerate(self.gpus) for j in range(per)]
        return [Slot(i) for i in range(self.workers)]


@dataclass
class Stores:
    """The tracking store and the ledger, opened and checked before anything is written."""

    tracker: Tracker
    ledger: Ledger

    @classmethod
    def open(cls, opts: SweepOptions) -> Stores:
        """Remote stores are checked first, so a server or database that is down stops us before anything is
        written; then the results folder, the SQLite database (created once, here) and the SQLite ledger."""
        uri = tracking_uri(opts.tracking_uri, opts.results)
        check_storage(opts.storage_url)
        local = uri.startswith("sqlite:")
        tracker = None if local else Tracker(uri, opts.results)
        if tracker is not None:
            tracker.check()
        ledger = None if is_local(opts.storage_url) else Ledger.open(opts.storage_url, patience=CONNECT_S)
        check_writable(opts.results)
        if tracker is None:
            tracker = Tracker(uri, opts.results)  # a SQLite client creates its database (and folder) at once
            tracker.check()
        return cls(tracker, ledger or Ledger.open(opts.storage_url))


def check_writable(results: Path) -> None:
    """The results folder exists (or is created) and takes a file; else one clear line, nothing written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SenetError(f"--results: {results} is not a writable folder ({err.strerror or err})") from None


def check_host(trials: list[Trial], host: Host) -> None:
    """Refuse, before anything runs, trials this host cannot serve (CUDA asked for, none visible)."""
    if host.device == "cuda":
        return
    wanting = [t for t in trials if t.config.train.device == "cuda"]
    if wanting:
        raise SenetError(
            f"train.device: 'cuda' requested ({wanting[0].label}, and {len(wanting) - 1} more) but this host has no "
            "CUDA device; allowed here: auto, cpu (or run the sweep on a GPU host)"
        )


class Sweep:
    """One study's sweep on one host: supervise warm workers until every trial is done or out of retries."""

    def __init__(
        self,
        spec: StudySpec,
        trials: list[Trial],
        opts: SweepOptions,
        stores: Stores,
        parent: str | None,
        joining: bool,
    ) -> None:
        self.spec, self.trials, self.opts = spec, trials, opts
        self.tracker, self.ledger = stores.tracker, stores.ledger
        self.results = opts.results
        self.manifest = Manifest(spec.name, parent, {t.key: ticket_of(t) for t in trials}, opts.max_retries,
                                 code_version(), opts.recycle_after, opts.max_rss_mb, opts.fail_fast,
                                 joiner=joining)  # fmt: skip
        self.reconciler = Reconciler(self.ledger, self.say)
        self.stop = threading.Event()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.deaths: dict[int, int] = {}  # slot → worker deaths in a row without a finished trial
        self.given_up: set[int] = set()
        self.per_gpu = opts.trials_per_gpu or 1
        self.failed_fast = False
        self.statuses: list[TrialStatus] = []

    def say(self, text: str) -> None:
        say(text)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """0 when every trial is done (diverged counts), 1 when some failed, 130 when stopped."""
        manifest_path = self.manifest.write(self.results)
        self._repair(self._reconcile())
        with Progress(self.opts.progress, self.trials) as progress:
            while not self.stop.is_set():
                ours = self._reconcile()  # end dead attempts, queue what is missing; where our trials stand
                self._show_progress(progress, ours)
                if self._settled():  # every trial done or failed (or one failed, under --fail-fast)
                    break
                if not self._staff(manifest_path, ours) and self._stranded(ours):  # every slot given up, none runs
                    break
                time.sleep(POLL_S)
        self._wind_down(stopping=self.stop.is_set() or self.failed_fast)
        self._repair(self._take_stock(self.ledger.attempts()))
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
        progress.show(sum(s.state.settled for s in self.statuses), attempts)

    def _settled(self) -> bool:
        """Every trial is done or failed, or one failed under --fail-fast (which winds the sweep down)."""
        if all(s.state.settled for s in self.statuses):
            return True
        if self.opts.fail_fast and any(s.state == Standing.FAILED for s in self.statuses):
            self.failed_fast = True
            return True
        return False

    def _stranded(self, attempts: list[Attempt]) -> bool:
        """With every slot given up: nothing runs any more either, so the sweep cannot go on (and says why)."""
        if any(a.state == State.RUNNING for a in attempts):
            return False
        self.say(f"sweep: every worker slot died {RESPAWNS} times in a row before finishing a trial; "
                 f"see {log_path(self.results, self.manifest.id, Slot(0))}")  # fmt: skip
        return True

    def _repair(self, attempts: list[Attempt]) -> None:
        m = self.manifest
        repair(
            self.tracker, self.ledger, attempts, m.keys, self.results, self.spec.name, m.parent_run, m.code, self.say
        )

    # -- workers ------------------------------------------------------------------------------------------------
    def _slots(self, attempts: list[Attempt]) -> list[Slot]:
        if self.opts.gpus and self.opts.trials_per_gpu is None:
            self.per_gpu = max(self.per_gpu, self._packed(attempts))
            return [Slot(i * MAX_SLOTS + j, g) for i, g in enumerate(self.opts.gpus) for j in range(self.per_gpu)]
        return self.opts.slots()

    def _packed(self, attempts: list[Attempt]) -> int:
        pending = {s.trial.config_hash for s in self.statuses if s.state in (Standing.PENDING, Standing.RUNNING)}
        return auto_per_gpu(attempts, pending)

    def _staff(self, manifest_path: Path, attempts: list[Attempt]) -> bool:
        """Adopt live workers, start the missing ones where there is work; False when every slot was given up."""
        for index, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[index]
            finished = any(a.owner is not None and a.owner.pid == proc.pid and a.state == State.COMPLETE
                           for a in attempts)  # fmt: skip
            if code in (EXIT_DONE, EXIT_RECYCLE, EXIT_STOPPED) or finished:
                self.deaths[index] = 0
            else:
                self.deaths[index] = self.deaths.get(index, 0) + 1
                if self.deaths[index] >= RESPAWNS:
                    self.given_up.add(index)
        waiting = any(a.state == State.WAITING for a in attempts)
        live = live_workers(self.results, self.manifest.id)
        staffed = set(self.children) | {w.slot for w in live}
        slots = self._slots(attempts)
        wanted = min(len(slots), self._work(attempts, {p.pid for p in self.children.values()} | {w.pid for w in live}))
        for slot in spread(slots):
            if len(staffed) >= wanted or not waiting:  # never more workers than trials for them
                break
            if slot.index in staffed or slot.index in self.given_up:
                continue
            self.children[slot.index] = self._spawn(slot, manifest_path, wanted)
            staffed.add(slot.index)
        return len(self.given_up) < len(slots)

    def _work(self, attempts: list[Attempt], pids: set[int]) -> int:
        """Trials that need one of our workers: those still to train, and those our own workers are training
        (a trial another host's worker trains needs none of ours)."""
        pending = sum(s.state == Standing.PENDING for s in self.statuses)
        training = sum(a.state == State.RUNNING and a.owner is not None and a.owner.is_local()
                       and a.owner.pid in pids for a in attempts)  # fmt: skip
        return pending + training

    def _spawn(self, slot: Slot, manifest_path: Path, slots: int) -> subprocess.Popen[bytes]:
        env = worker_env(dict(os.environ), slot, cpu_threads(slots), self.results)
        env[STORAGE_ENV] = self.opts.storage_url  # by environment: a password must never show in `ps`
        env[TRACKING_ENV] = self.tracker.uri
        cmd = [sys.executable, "-m", "ablations.sweep.worker", "--manifest", str(manifest_path),
               "--results", str(self.results), "--slot", str(slot.index)]  # fmt: skip
        if slot.gpu is not None:
            cmd += ["--gpu", slot.gpu]
        log = log_path(self.results, self.manifest.id, slot)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:  # the worker's own file: it outlives us, a pipe would not
            return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip

    def terminate(self) -> None:
        """SIGTERM to every worker of this sweep on this host (ours and adopted; a joiner's manifest has its own id,
        so a joiner's are never the sweep's): they end their attempts as `stopped` and their runs KILLED."""
        pids = {p.pid for p in self.children.values()} | {w.pid for w in live_workers(self.results, self.manifest.id)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

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
            time.sleep(0.2)
        self.terminate()


MAX_SLOTS = 1000  # slot numbers per GPU under --trials-per-gpu auto (GPU i has slots i*1000 ...)


def spread(slots: list[Slot]) -> list[Slot]:
    """Slots in the order their workers start: across the GPUs first (each GPU's first slot, then each second
    one ...), so fewer workers than slots still use every device."""
    rank: dict[str | None, int] = {}
    ranked = []
    for slot in slots:
        rank[slot.gpu] = rank.get(slot.gpu, 0) + 1
        ranked.append((rank[slot.gpu], slot))
    return [slot for _, slot in sorted(ranked, key=lambda r: r[0])]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _install_signals(sweep: Sweep) -> None:
    """First Ctrl-C/SIGTERM: stop the workers cleanly; a second one exits at once."""

    def handler(signum: int, _frame: object) -> None:
        if sweep.stop.is_set():
            os._exit(130)
        sweep.stop.set()
        sweep.say("\nstopping: running trials end as stopped and resume next time (Ctrl-C again to exit now)")
        sweep.terminate()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(spec: StudySpec, opts: SweepOptions, create: bool = True) -> tuple[int, list[TrialStatus]]:
    """`sweep` (create=True) and `worker` (create=False: join a sweep whose parent run exists) of a loaded study.

    Raises:
        SenetError: bad input, an unreachable store, no sweep to join; before anything is written.
    """
    host = Host.here()
    if not create and not opts.overrides and Ledger.exists(opts.storage_url):  # join the sweep as it was run
        recorded = Ledger.open(opts.storage_url, patience=CONNECT_S).note(spec.name).get("overrides")
        opts = dataclasses.replace(opts, overrides=recorded or {})
    trials = plan_fetching(spec, opts.overrides, host)
    check_host(trials, host)
    stores = Stores.open(opts)
    if create:
        parent = parent_run(stores.tracker, stores.ledger, spec.name, spec.description, {Tag.HOST_DEVICE: host.device})
        record(stores.ledger, spec, trials, host, opts.overrides)
        say_earlier(stores.ledger, trials)
        requeue_config_failures(stores.ledger, trials, opts.max_retries, say)
    else:
        parent = stores.ledger.parent(spec.name) or stores.tracker.find_parent(spec.name)
        known = {a.key for a in stores.ledger.attempts()}
        if parent is None or not known & {t.key for t in trials}:
            raise SenetError(
                f"worker: no sweep of {spec.name!r} with these settings in the ledger ({len(trials)} trials, none "
                "queued or run); start one with `sweep`, or give `worker` the sweep's own --set"
            )
    sweep = Sweep(spec, trials, opts, stores, parent, joining=not create)
    _install_signals(sweep)
    code = sweep.run()
    if create:
        stores.tracker.finish_parent(parent, code == 0)
    return code, sweep.statuses


def plan_fetching(spec: StudySpec, overrides: dict[str, Any], host: Host) -> list[Trial]:
    """The sweep's trials, downloading first each missing dataset whose trials allow it (`data.download`): their keys
    hold the digest of the files, so the files must be there before anything is planned or written.

    Raises:
        SenetError: what `plan_trials` refuses; missing data the trials do not let the sweep download (the readers'
            one line), or a download that failed.
    """
    fetched: set[tuple[str, str | None]] = set()
    while True:
        try:
            return plan_trials(spec, overrides, host)
        except MissingData as missing:
            data = missing.data
            if not data.download or (data.dataset, data.root) in fetched:
                raise
            say(f"sweep: {data.dataset} is missing; downloading it into {download_root(data)} (data.download=true)")
            download(data)
            fetched.add((data.dataset, data.root))


def say_earlier(ledger: Ledger, trials: list[Trial]) -> None:
    """Say, in one line, how many trials have results only under an earlier identity version: the sweep trains them
    under the current one (those results stay in the ledger, shown as such by `status` and `report`)."""
    grouped = by_key(ledger.attempts())
    found = [(t, s) for t in trials if (s := earlier_result(t, grouped)) is not None]
    if found:
        versions = ", ".join(map(str, sorted({v for t, s in found for v, k in t.earlier.items() if k == s.earlier})))
        say(f"sweep: {len(found)} of its {len(trials)} trials have results only under an earlier identity (version "
            f"{versions}); they are trained under identity version {IDENTITY_VERSION}")  # fmt: skip


def record(ledger: Ledger, spec: StudySpec, trials: list[Trial], host: Host, overrides: dict[str, Any]) -> None:
    """What `status`, `report`, `worker` and `retry` read back: how the sweep resolved `auto` and which `--set` it
    ran with, where its file is (a study run from a file is found again by its name), and its trials with the
    identity version their keys were made by, under every study they belong to."""
    shipped = spec._file is None or spec._file.parent == Path(str(STUDIES))
    where = None if shipped else str(spec._file.resolve())  # type: ignore[union-attr]
    ledger.set_note(spec.name, {"device": host.device, "overrides": overrides, "spec": where,
                                "identity_version": IDENTITY_VERSION})  # fmt: skip
    by_study: dict[str, list[TrialRecord]] = {}
    for t in trials:
        for study in t.studies:
            by_study.setdefault(study, []).append(TrialRecord(t.key, t.config_hash, t.seed, IDENTITY_VERSION))
    for study, records in by_study.items():
        ledger.record_trials(study, records)


def requeue_config_failures(ledger: Ledger, trials: list[Trial], max_retries: int, say: Callable[[str], None]) -> None:
    """Trials that failed for their configuration were refused by a host that could not run them (data missing, a
    device it lacked): this host has just passed every check a sweep makes before it writes, so each gets one more
    attempt, said so."""
    found = statuses(trials, ledger.attempts(), max_retries)
    again = [s for s in found if s.state == Standing.FAILED and s.reason.startswith(f"{Ending.CONFIG}:")]
    queue_again(ledger, trials, {s.trial.key for s in again})
    if again:
        say(f"sweep: {len(again)} trials failed for their configuration before ({again[0].reason}); this host "
            "passes the sweep's checks now, so they are tried again")  # fmt: skip
