"""A warm slot worker: one long-lived process that claims, trains and records trials one after another.

`python -m ablations.sweep.worker --manifest results/sweeps/<id>.json --slot N [--gpu ID]`, started by a
sweep (never by hand). It keeps its imports, CUDA context, MLflow client, decoded datasets and compiled models
between trials, and is replaced by a fresh process after a failure, after `recycle_after` trials or when its
memory grows past the limit. It writes to its own log file, never to its controller, and owns its leases: when
the controller dies it finishes its trial, records it, and goes on until the sweep is done. A packed worker
(`--trials-per-gpu auto`) also probes, reports its images/s and leaves when asked (`ablations.sweep.probe`).

Per attempt: claim (the ledger's compare-and-set), heartbeat, MLflow run, train (checkpoint every epoch, the
lease checked before each write), then result → ledger → MLflow: the run is FINISHED only after the ledger
accepted the result. Its exit codes are the runner <-> worker contract in `ablations.sweep.manifest`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from ablations.config import RunConfig, build_config
from ablations.costs import input_shape
from ablations.datafiles import digest, locate
from ablations.errors import SenetError
from ablations.exits import exit_now
from ablations.outcomes import Ending, RunStatus, Standing
from ablations.paths import STORAGE_ENV, TRACEBACK, TRACKING_ENV, TRAIN_LOG, run_dir
from ablations.sweep.heartbeat import Heartbeat
from ablations.sweep.ledger import Attempt, LeaseLost, Ledger, Owner, StoreUnavailable, Ticket
from ablations.sweep.live import LiveFile
from ablations.sweep.manifest import (
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_RECYCLE,
    EXIT_RETIRED,
    EXIT_STOPPED,
    Manifest,
)
from ablations.sweep.probe import RETIRING, Packed, listen_for_retire
from ablations.sweep.reconcile import Reconciler
from ablations.sweep.repair import end_runs, trial_info
from ablations.sweep.runlog import RunLog, system_metrics
from ablations.sweep.slots import GpuPermit, Slot, hold_group, register
from ablations.sweep.status import by_key, classify_attempts
from ablations.sweep.stops import STOPS, Stop, failpoint
from ablations.tracking import Tracker, code_tags, environment_tags
from ablations.training.ddp import train_trial
from ablations.training.engine import Callback, Paused, Warm, is_out_of_memory
from ablations.training.nodes import devices_here
from ablations.training.result import RunResult
from ablations.training.steps import Progress
from senet_core import build_model, se_blocks

IDLE_S = 0.5  # pause between looks at the ledger while other workers' trials run
MANIFEST_POLL_S = 0.02  # how often a first worker looks for the manifest its sweep is about to write


class Track(Callback):
    """Per-epoch metrics to MLflow (buffered), progress and the lease to the ledger, a line per epoch to the trial's
    train.log and where the epoch stands to its progress file."""

    def __init__(
        self, worker: Worker, attempt: Attempt, cfg: RunConfig, run_id: str | None, beat: Heartbeat, live: LiveFile,
        log: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.worker, self.attempt, self.cfg, self.run_id, self.beat = worker, attempt, cfg, run_id, beat
        self.live, self.log = live, log

    def on_start(self, info: dict[str, Any]) -> None:
        run_id, tracker, cfg = self.run_id, self.worker.tracker, self.cfg
        self.live.epoch = info["resumed_from"]
        resumed = f", resumed after epoch {info['resumed_from']}" if info["resumed_from"] else ""
        self.log(f"start: {cfg.model.name} on {cfg.data.dataset}, {cfg.train.epochs} epochs on {info['device']}, "
                 f"{info['params']:,} params, {info['gflops']:.4f} GFLOPs{resumed}")  # fmt: skip
        if run_id:
            text = json.dumps(info, indent=1, default=str)
            self.worker.runlog.submit(lambda: tracker.log_text(run_id, text, "start.json"))
            # built on the logging thread, off the training path
            self.worker.runlog.submit(lambda: tracker.log_text(run_id, model_summary(cfg, info), "model_summary.txt"))

    def pause_requested(self) -> bool:
        return STOPS.pausing is not None

    def before_save(self, epoch: int) -> None:
        self.beat.check()
        self.worker.ledger.heartbeat(self.attempt)  # LeaseLost unless the lease is still ours: never save for another

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        failpoint("after_epoch")
        self.log(epoch_line(epoch, self.cfg.train.epochs, metrics))
        self.live.epoch_done(epoch, metrics["val_top1_err"])
        if self.run_id:
            run_id = self.run_id
            self.worker.runlog.submit(lambda: self.worker.tracker.log_epoch(run_id, epoch, metrics))
        self.worker.ledger.update(self.attempt, epoch=epoch)

    def on_end(self, result: RunResult) -> None:
        s = result.summary
        if result.status == "finished":
            self.log(f"end: test top-1 err {s['test_top1_err']:.2f}%, top-5 {s['test_top5_err']:.2f}%; final val "
                     f"top-1 err {s['final_val_top1_err']:.2f}%")  # fmt: skip
        else:
            self.log(f"end: {result.status} at epoch {s.get('diverged_epoch')}")


def epoch_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One epoch of a trial's train.log: losses and errors (%), learning rate, time and throughput."""
    return (f"epoch {epoch}/{epochs}: train loss {m['train_loss']:.4f} top-1 err {m['train_top1_err']:.2f}%, val loss "
            f"{m['val_loss']:.4f} top-1 err {m['val_top1_err']:.2f}% top-5 err {m['val_top5_err']:.2f}%, lr "
            f"{m['lr']:.4g}, {m['epoch_time_s']:.1f} s, {m['epoch_images_per_s']:.0f} images/s")  # fmt: skip


def model_summary(cfg: RunConfig, info: dict[str, Any]) -> str:
    """The network as built for this trial, its cost and its SE blocks by paper name."""
    channels, size, classes = input_shape(cfg)
    with torch.device("meta"):
        net = build_model(cfg.model.name, cfg.model_options(channels, classes))
    blocks = ", ".join(f"{n} ({b.channels}→{b.fc1.out_channels})" for n, b in se_blocks(net).items()) or "none"
    head = f"{cfg.model.name}: {info['params']:,} params, {info['gflops']:.4f} GFLOPs at {channels}×{size}×{size}"
    return f"{head}\nSE blocks (channels→hidden): {blocks}\n\n{net}\n"


class Worker:
    """One slot's loop: claim, train, record, until the sweep has nothing left for it."""

    def __init__(self, manifest: Manifest, results: Path, slot: Slot, storage: str, uri: str) -> None:
        self.manifest, self.results, self.slot = manifest, results, slot
        self.ledger = Ledger.open(storage)
        self.tracker = Tracker(uri, results)
        self.runlog = RunLog()
        self.reconciler = Reconciler(self.ledger, self.note)
        self.owner = Owner.me()
        self.warm = Warm()
        self.permit = GpuPermit(results, slot.gpu) if slot.gpu is not None else None
        self.cuda = torch.cuda.is_available()
        self.packed = Packed(results, manifest.id, slot.gpu) if slot.packed and slot.gpu and self.cuda else None
        self.trained = 0
        self._typed: tuple[dict[str, Any], RunConfig] | None = None  # the last ticket config validated, typed

    def close(self) -> None:
        """Every MLflow write handed to the background thread done, the ledger's connections closed."""
        self.runlog.flush()
        self.ledger.close()

    def note(self, text: str) -> None:
        print(f"{datetime.now():%H:%M:%S} slot {self.slot.index}: {text}", flush=True)

    def serves(self, ticket: Ticket) -> bool:
        """Whether this worker can run the ticket (a CUDA trial needs a visible CUDA device)."""
        if self.cuda:
            return True
        try:
            return self.config(ticket).train.device != "cuda"
        except Exception:  # claimed, and ended by `run_attempt` as the failure it is
            return True

    def config(self, ticket: Ticket) -> RunConfig:
        """The ticket's configuration, typed; validated once for the ticket `serves` looked at and then claimed."""
        if self._typed is None or self._typed[0] != ticket.config:
            cfg = build_config(ticket.config)
            check_data(ticket, cfg)
            self._typed = (ticket.config, cfg)
        return self._typed[1]

    def run(self) -> int:
        register(self.results, self.manifest.id, self.slot)
        while True:
            if self.trained >= self.manifest.recycle_after or self._too_big():
                self.note(f"recycled after {self.trained} trials")
                return EXIT_RECYCLE
            if RETIRING.is_set():
                self.note(f"left its GPU after {self.trained} trials, as its sweep asked (--trials-per-gpu auto)")
                return EXIT_RETIRED
            STOPS.hold()  # released inside `run_attempt`'s handler: a stop from here on ends the attempt `stopped`
            attempt = self.ledger.claim(self.manifest.keys, self.owner, self.serves)
            if attempt is None:
                STOPS.release()
                if self._settled():
                    return EXIT_DONE
                time.sleep(IDLE_S)
                continue
            failpoint("after_claim")
            ending = self.run_attempt(attempt)
            self.trained += 1
            if self.manifest.fail_fast and ending.failure and self._failed(attempt.key):
                self.note(f"{attempt.ticket.label} seed {attempt.ticket.seed} failed: stopping (--fail-fast)")
                return EXIT_DONE
            if ending.uses_retry:
                return EXIT_RECYCLE  # a fresh process for the next trial: nothing of a failure leaks into it

    def _too_big(self) -> bool:
        limit = self.manifest.max_rss_mb
        return limit is not None and psutil.Process().memory_info().rss / 2**20 > limit

    def _failed(self, key: str) -> bool:
        mine = [a for a in self.ledger.attempts() if a.key == key]
        return classify_attempts(mine, self.manifest.max_retries) == Standing.FAILED

    def _settled(self) -> bool:
        """Reconcile and say whether every trial of the sweep is done or failed."""
        attempts, ended = self.reconciler.reconcile(
            self.manifest.tickets, self.manifest.max_retries, queue_new=self.manifest.queue_new
        )
        end_runs(self.tracker, ended)
        grouped = by_key(attempts)
        return all(classify_attempts(grouped.get(k, []), self.manifest.max_retries).settled for k in self.manifest.keys)

    # -- one attempt --------------------------------------------------------------------------------------------
    def run_attempt(self, attempt: Attempt) -> Ending:
        """Train one claimed attempt and end it in the ledger and MLflow; returns how it ended."""
        t = attempt.ticket
        folder = run_dir(self.results, t.key)
        folder.mkdir(parents=True, exist_ok=True)
        self.note(f"{t.label} seed {t.seed}: attempt {t.number} (ledger id {attempt.trial_id})")
        run_id: str | None = None
        progress = Progress()

        def stalled(reason: str) -> None:  # on the heartbeat's thread: the training's own thread is stuck
            self.note(f"{t.label} seed {t.seed}: attempt {t.number} {Ending.STALLED}: {reason}")
            with contextlib.suppress(Exception):
                logfile.write(f"stalled: {reason}\n")
                logfile.flush()
            if run_id:
                with contextlib.suppress(Exception):
                    self.tracker.end(run_id, Ending.STALLED.run_status, f"{Ending.STALLED}: {reason}")
            os._exit(EXIT_RECYCLE)

        with (
            open(folder / TRAIN_LOG, "a") as logfile,
            Heartbeat(self.ledger, attempt, self.ledger.liveness.heartbeat_s, progress, stalled) as beat,
            LiveFile(folder, int(t.config["train"]["epochs"]), progress) as live,
        ):
            log = _logger(logfile)
            try:
                STOPS.release()  # a stop held since the claim ends the attempt here
                cfg = self.config(t)
                run_id = self._start_run(attempt, cfg)
                failpoint("before_training")
                if self.cuda:  # the previous trial's cached blocks must not count as this one's reserved memory
                    torch.cuda.empty_cache()
                with self._devices(cfg, t.exclusive, folder, log), system_metrics(run_id, self.tracker.uri):
                    listeners: list[Callback] = [Track(self, attempt, cfg, run_id, beat, live, log)]
                    if (
                        self.packed is not None and cfg.train.devices == 1
                    ):  # measured before it trains here; its epochs' images/s reported
                        self.packed.probe(cfg, t.config_hash)
                        listeners.append(self.packed)
                    with STOPS.train():
                        result = train_trial(cfg, folder, listeners, log=log, warm=self.warm, progress=progress)
                return self._record(attempt, run_id, result)
            except Stop as sig:
                self._end(attempt, run_id, Ending.STOPPED, f"stopped by {sig}")
                raise
            except Paused as paused:  # a stop while it trained: checkpointed at the step it had reached
                self._end(attempt, run_id, Ending.STOPPED, f"stopped by {STOPS.pausing}, {paused}")
                raise Stop(STOPS.pausing) from None
            except LeaseLost:
                now = self.ledger.attempt(attempt.trial_id)
                why = f"superseded: the ledger ended this attempt ({now.kind or now.state.name}: {now.reason})"
                log(why)
                if run_id:
                    self.runlog.call(lambda: self.tracker.end(run_id, RunStatus.KILLED, why))
                return Ending.LOST
            except StoreUnavailable as err:  # nothing can be written: the lease lapses and the trial goes on elsewhere
                why = f"ledger unreachable: {err}"
                log(why)
                if run_id:
                    self.runlog.call(lambda: self.tracker.end(run_id, RunStatus.KILLED, why))
                raise
            except Exception as err:
                kind = failure(err)
                text = traceback.format_exc()
                (folder / TRACEBACK).write_text(text)
                log(text)
                if run_id:
                    self.runlog.submit(lambda: self.tracker.log_text(run_id, text, TRACEBACK))
                reason = str(err).strip().splitlines()[0][:500] if str(err).strip() else type(err).__name__
                self._end(attempt, run_id, kind, reason)
                return kind

    def _devices(
        self, cfg: RunConfig, exclusive: bool, folder: Path, log: Callable[[str], None]
    ) -> contextlib.AbstractContextManager[Any]:
        """The slot's GPU, shared (or alone after an out-of-memory failure), or every GPU of a group trial."""
        if cfg.train.devices > 1 and self.slot.gpu is not None:  # this node's part of a group over several nodes
            n = cfg.train.devices
            return hold_group(self.results, self.slot, devices_here(n), folder, log, of=n)
        return self.permit.hold(exclusive) if self.permit is not None else contextlib.nullcontext()

    def _start_run(self, attempt: Attempt, cfg: RunConfig) -> str | None:
        """The attempt's MLflow run (None if MLflow stays unreachable: the sweep builds it later from the result)."""
        info = trial_info(attempt)
        tags = {**environment_tags(cfg.train.device), **code_tags(self.manifest.code)}
        created: list[str] = []
        study, parent = self.manifest.study, self.manifest.parent_run
        if not self.runlog.call(lambda: created.append(self.tracker.start_trial(study, parent, info, tags))):
            return None
        run_id = created[0]
        self.ledger.update(attempt, run_id=run_id)
        config_text = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
        self.runlog.submit(lambda: self.tracker.log_text(run_id, config_text, "config.yaml"))
        return run_id

    def _record(self, attempt: Attempt, run_id: str | None, result: RunResult) -> Ending:
        """Result → ledger → MLflow: the ledger takes the result at once (never behind MLflow's backlog of buffered
        writes), and the run is FINISHED only once the ledger accepted it."""
        outcome = Ending(result.status)
        value = result.summary.get("final_val_top1_err", float("nan"))
        extra = {"memory": self._memory()} if self.cuda else {}
        self.ledger.complete(attempt, value, outcome, result=dataclasses.asdict(result), **extra)
        failpoint("after_complete")
        if run_id:
            self.runlog.flush()
            self.runlog.call(lambda: self.tracker.log_summary(run_id, result.summary, outcome))
            if result.notes:
                notes = "\n".join(result.notes)
                self.runlog.submit(lambda: self.tracker.log_text(run_id, notes, "notes.txt"))
            self.runlog.call(lambda: self.tracker.end(run_id, outcome.run_status))
        self.note(f"{attempt.ticket.label} seed {attempt.ticket.seed}: {outcome}")
        return outcome

    def _end(self, attempt: Attempt, run_id: str | None, kind: Ending, reason: str) -> None:
        if self.ledger.fail(attempt, kind, reason, **({"run_id": run_id} if run_id else {})):
            self.note(f"{attempt.ticket.label} seed {attempt.ticket.seed}: {kind}: {reason}")
        if run_id:
            self.runlog.call(lambda: self.tracker.end(run_id, kind.run_status, f"{kind}: {reason}"))

    def _memory(self) -> dict[str, float]:
        """Peak reserved memory of the last trial and the device's total (MB); the CUDA context is in the probe."""
        total = torch.cuda.get_device_properties(0).total_memory / 2**20
        return {"reserved_mb": torch.cuda.max_memory_reserved() / 2**20, "total_mb": total}


def check_data(ticket: Ticket, cfg: RunConfig) -> None:
    """The dataset's files on this host are the ones the trial's key holds (hosts sharing a sweep find them under
    their own `data.root`); another copy (relabelled, another version) would train another trial under this key."""
    if ticket.data_files is None:
        return
    here = digest(cfg.data)
    if here != ticket.data_files:
        raise SenetError(
            f"data.files: the {cfg.data.dataset} files this host reads ({', '.join(map(str, locate(cfg.data)))}) are "
            f"not the ones the trial's key holds ({here[:15]}… here, {ticket.data_files[:15]}… in the sweep); give "
            "this host the same files (--set data.root=DIR) or let other hosts train it"
        )


def failure(err: Exception) -> Ending:
    """How an error in training ends its attempt: the configuration's fault (a SenetError), out of memory, a crash."""
    if isinstance(err, SenetError):
        return Ending.CONFIG
    return Ending.OOM if is_out_of_memory(err) else Ending.CRASH


def _logger(logfile: Any) -> Callable[[str], None]:
    def log(text: str) -> None:
        logfile.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}\n")
        logfile.flush()

    return log


def wait_for_manifest(path: Path, sweep: int, after: str) -> Manifest | None:
    """A sweep's first worker starts before its manifest is written: it imports the MLflow client meanwhile, then
    waits for a manifest other than the one that was there when it started (`after`: an earlier sweep of the same
    trials left it, or none) while the sweep lives. None when the sweep ended without writing it."""
    Tracker.preload()
    while os.getppid() == sweep:  # else our sweep is gone (we were handed to init)
        if Manifest.state(path) != after:
            return Manifest.read(path)
        time.sleep(MANIFEST_POLL_S)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.sweep.worker")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--gpu", help="the CUDA device this slot is pinned to (CUDA_VISIBLE_DEVICES is set for it)")
    p.add_argument("--packed", action="store_true", help="--trials-per-gpu auto: probe, report images/s, retire")
    p.add_argument("--host-gpus", default="", help="every GPU of the sweep on this host (train.devices > 1)")
    p.add_argument("--wait-for", type=int, metavar="PID", help="the sweep (our parent) writes the manifest later")
    p.add_argument("--after", default="none", help="with --wait-for: the manifest there when we started (stale)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, STOPS.handler)
    signal.signal(signal.SIGINT, STOPS.handler)
    signal.signal(signal.SIGUSR2, STOPS.handler)  # a Slurm job's notice before its time limit (or its task's)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a dropped SSH session must not take the worker with it
    listen_for_retire()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    threads = os.environ.get("SENET_ABLATE_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    storage, uri = os.environ.get(STORAGE_ENV), os.environ.get(TRACKING_ENV)
    if not storage or not uri:
        p.error(f"{STORAGE_ENV} and {TRACKING_ENV} must be set (the sweep passes them by environment)")
    try:
        manifest = (
            Manifest.read(a.manifest) if a.wait_for is None else wait_for_manifest(a.manifest, a.wait_for, a.after)
        )
        if manifest is None:
            return EXIT_STOPPED
        worker = Worker(
            manifest,
            a.results,
            Slot(a.slot, a.gpu, a.packed, tuple(g for g in a.host_gpus.split(",") if g)),
            storage,
            uri,
        )
        try:
            return worker.run()
        finally:
            worker.close()
    except Stop:
        return EXIT_STOPPED
    except (SenetError, StoreUnavailable) as err:
        print(f"worker: error: {err}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    exit_now(main())
