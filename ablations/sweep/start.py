"""How a sweep starts: its options, its stores opened and checked before anything is written, its trials planned
(missing data fetched first where allowed) and recorded in the ledger, and its first worker started early.

A worker spends seconds importing torch and MLflow before it trains. The first one therefore starts once the input,
the results folder and the ledger are checked, and waits for the sweep's manifest, so that its start overlaps the
controller's own MLflow set-up instead of following it; a sweep that stops before writing its manifest ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.config import IDENTITY_VERSION, Host
from ablations.data.readers import download
from ablations.datafiles import MissingData, download_root
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.paths import RESULTS
from ablations.study.load import STUDIES
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial, plan_trials
from ablations.sweep.ledger import CONNECT_S, Ledger, TrialRecord, check_storage, is_local
from ablations.sweep.manifest import Manifest
from ablations.sweep.reconcile import queue_again
from ablations.sweep.slots import MAX_SLOTS, Slot, cpu_threads, live_workers, log_path, spawn_worker, spread
from ablations.sweep.status import by_key, earlier_result, ledger_url, statuses
from ablations.tracking import Tracker, tracking_uri


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class SweepOptions:
    """Where and how a sweep runs (CLI flags)."""

    results: Path = RESULTS
    storage: str | None = None  # ledger URL; default: ledger.db under results
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in results
    workers: int = 1  # CPU slots (one warm worker each)
    gpus: list[str] = field(default_factory=list)  # CUDA devices as `parse_gpus` resolved them; slots pinned to them
    trials_per_gpu: int | None = 1  # slots per GPU; None = auto (`ablations.sweep.packing` decides, from measurements)
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
        """The slots of fixed packing; under `auto` the first packed slot of each GPU (the sweep adds the others)."""
        if self.gpus and self.trials_per_gpu is None:
            return [Slot(i * MAX_SLOTS, g, packed=True, host=tuple(self.gpus)) for i, g in enumerate(self.gpus)]
        if self.gpus:
            per = self.trials_per_gpu or 1
            return [Slot(i * per + j, g, host=tuple(self.gpus)) for i, g in enumerate(self.gpus) for j in range(per)]
        return [Slot(i) for i in range(self.workers)]


@dataclass
class Stores:
    """The tracking store and the ledger, opened and checked before anything is written."""

    tracker: Tracker
    ledger: Ledger

    @classmethod
    def open(cls, opts: SweepOptions, first: FirstWorker | None = None) -> Stores:
        """Remote stores are checked first, so a server or database that is down stops us before anything is
        written; then the results folder and an existing SQLite ledger. The `first` worker starts there, before the
        SQLite tracking database and a new SQLite ledger are created (once, here) after everything else passed."""
        uri = tracking_uri(opts.tracking_uri, opts.results)
        check_storage(opts.storage_url)
        local = uri.startswith("sqlite:")
        tracker = None if local else Tracker(uri, opts.results)
        if tracker is not None:
            tracker.check()
        ledger = None if is_local(opts.storage_url) else Ledger.open(opts.storage_url, patience=CONNECT_S)
        check_writable(opts.results)
        if ledger is None and Ledger.exists(opts.storage_url):
            ledger = Ledger.open(opts.storage_url)
        if first is not None:
            first.start(ledger, uri)  # no ledger yet: everything is still to train
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


class FirstWorker:
    """The sweep's first worker, started as soon as the input, the results folder and the ledger are checked, before
    the controller sets up MLflow (its experiment, the parent run): it imports torch and MLflow meanwhile and waits
    for the manifest. None is started when nothing is left to train, or when workers of the sweep live on this host
    (the sweep adopts those)."""

    def __init__(self, opts: SweepOptions, trials: list[Trial], manifest: Manifest) -> None:
        self.opts, self.trials, self.manifest = opts, trials, manifest
        self.slot: Slot | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ledger: Ledger | None, uri: str) -> None:
        opts, results = self.opts, self.opts.results
        found = statuses(self.trials, ledger.attempts() if ledger else [], opts.max_retries)
        pending = sum(s.state == Standing.PENDING for s in found)
        if not pending or live_workers(results, self.manifest.id):
            return
        slots = opts.slots()
        self.slot = spread(slots)[0]
        threads = cpu_threads(min(len(slots), pending))  # as the sweep gives its workers threads
        path = self.manifest.path(results)
        stores = (opts.storage_url, uri)
        self.proc = spawn_worker(results, path, self.manifest.id, self.slot, threads, stores, Manifest.state(path))

    def children(self) -> dict[int, subprocess.Popen[bytes]]:
        return {self.slot.index: self.proc} if self.slot is not None and self.proc is not None else {}

    def cancel(self) -> None:
        """The sweep ends before writing its manifest (an error, a Ctrl-C): the waiting worker exits, and its empty
        log goes with it."""
        if self.slot is None or self.proc is None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        log = log_path(self.opts.results, self.manifest.id, self.slot)
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:
                log.unlink()
                log.parent.rmdir()  # the sweep's folder of workers, then the folder of all sweeps' workers
                log.parent.parent.rmdir()


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


def as_joined(spec: StudySpec, opts: SweepOptions, host: Host) -> tuple[SweepOptions, Host]:
    """A joiner (`worker`, a Slurm task, `worker --launcher slurm`) plans as the sweep it joins was run: with its
    recorded overrides unless some are given, and for the device it recorded (else `host`)."""
    if not Ledger.exists(opts.storage_url):
        return opts, host
    note = Ledger.open(opts.storage_url, patience=CONNECT_S).note(spec.name)
    if not opts.overrides:
        opts = dataclasses.replace(opts, overrides=note.get("overrides") or {})
    return opts, Host(note["device"]) if note.get("device") in ("cpu", "cuda") else host


def spec_file(spec: StudySpec) -> str | None:
    """The spec's file, absolute, for a study run from a file; None for a shipped study (found by its name)."""
    shipped = spec._file is None or spec._file.parent == Path(str(STUDIES))
    return None if shipped else str(spec._file.resolve())  # type: ignore[union-attr]


def record(ledger: Ledger, spec: StudySpec, trials: list[Trial], host: Host, overrides: dict[str, Any]) -> None:
    """What `status`, `report`, `worker` and `retry` read back: how the sweep resolved `auto` and which overrides it
    ran with (`--set` values, and the levels, reference levels and seeds of `ablations.study.overrides`, applied by
    `trials.expand` wherever the trials are planned again), where its file is (a study run from a file is found
    again by its name), its trials' keys in order (read back where the data files are missing), and its trials
    with the identity version their keys were made by, under every study they belong to."""
    ledger.set_note(spec.name, {"device": host.device, "overrides": overrides, "spec": spec_file(spec),
                                "identity_version": IDENTITY_VERSION, "keys": [t.key for t in trials]})  # fmt: skip
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
