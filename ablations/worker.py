"""One trial in one fresh process: `python -m ablations.worker --trial-id N ...`, spawned by the sweep runner.

A fresh process per trial means no memory (or GPU memory) leaks from one trial into the next. The process
trains the ledger trial it is given, logs it to MLflow under the study's parent run, and ends the ledger
entry: COMPLETE (finished or diverged) or FAIL with the failure kind. Its exit code tells the runner what
happened; progress goes to stdout as `@@` lines the runner turns into progress bars.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from optuna.exceptions import UpdateFinishedTrialError

from ablations.config import RunConfig, build_config, cost, input_shape
from ablations.ledger import HEARTBEAT_S, Ledger, open_storage
from ablations.tracking import Tracker
from ablations.train import Callback, RunResult, failure_kind, pick_device, train
from senet_core import build_model, se_blocks

STORAGE_ENV = "SENET_ABLATE_STORAGE"  # same variable as the CLI's default for --storage
EXIT = {"done": 0, "oom": 3, "error": 4, "killed": 5, "data": 6}
KIND_BY_EXIT = {v: k for k, v in EXIT.items()}


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the worker; the run is marked KILLED and the ledger entry FAIL."""


class Track(Callback):
    """Per-epoch metrics to MLflow, a heartbeat to the ledger and a progress line to the runner."""

    def __init__(self, tracker: Tracker, run_id: str, ledger: Ledger, trial_id: int, epochs: int) -> None:
        self.tracker, self.run_id, self.ledger, self.trial_id, self.epochs = tracker, run_id, ledger, trial_id, epochs

    def on_start(self, info: dict[str, Any]) -> None:
        self.tracker.log_text(self.run_id, json.dumps(info, indent=1, default=str), "start.json")
        print(f"@@start {info['resumed_from']} {self.epochs}", flush=True)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_epoch(self.run_id, epoch, metrics)
        self.ledger.set_attrs(self.trial_id, {"epoch": epoch})
        print(f"@@epoch {epoch} {self.epochs} {metrics['val_top1_err']:.2f}", flush=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _beat(ledger: Ledger, trial_id: int, stop: threading.Event) -> None:
    """Keep the trial's heartbeat while this process lives; when its host dies, the beat stops."""
    while not stop.wait(HEARTBEAT_S):
        try:
            ledger.heartbeat(trial_id)
        except UpdateFinishedTrialError:
            return  # another process ended the trial (it judged this worker dead); nothing left to keep alive
        except Exception as err:  # a lost beat must not kill training; the next one may get through
            print(f"heartbeat failed: {type(err).__name__}", file=sys.stderr, flush=True)


def run_trial(trial_id: int, study: str, parent_id: str, storage: str, uri: str, results: Path) -> int:
    """Train ledger trial `trial_id` and record it everywhere; returns the process exit code."""
    ledger = Ledger(open_storage(storage))
    attrs = ledger.attrs(trial_id)
    ledger.heartbeat(trial_id)
    threading.Thread(target=_beat, args=(ledger, trial_id, threading.Event()), daemon=True).start()
    ledger.take(trial_id)
    cfg = build_config(attrs["config"])
    tracker = Tracker(uri, results)
    device = str(pick_device(cfg.train.device))
    run_id = tracker.start_trial(study, parent_id, {**attrs, "flat": cfg.flat()}, device)
    ledger.set_attrs(trial_id, {"run_id": run_id})
    tracker.log_text(run_id, yaml.safe_dump(cfg.model_dump(), sort_keys=False), "config.yaml")
    tracker.log_text(run_id, model_summary(cfg), "model_summary.txt")
    run_dir = results / "runs" / attrs["key"]
    run_dir.mkdir(parents=True, exist_ok=True)
    track = Track(tracker, run_id, ledger, trial_id, cfg.train.epochs)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=10, tracking_uri=uri)
    monitor.start()
    try:
        result = train(cfg, run_dir, [track], log=lambda s: print(s, flush=True))
    except Interrupted as sig:
        monitor.finish()
        tracker.end(run_id, "KILLED")
        ledger.fail(trial_id, {"kind": "killed", "reason": f"interrupted by {sig}"})
        return EXIT["killed"]
    except Exception as err:
        monitor.finish()
        kind = failure_kind(err)
        text = traceback.format_exc()
        (run_dir / "traceback.txt").write_text(text)
        tracker.log_text(run_id, text, "traceback.txt")
        tracker.end(run_id, "FAILED")
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        ledger.fail(trial_id, {"kind": kind, "reason": reason, "run_id": run_id})
        print(f"@@fail {kind} {reason}", flush=True)
        return EXIT[kind]
    monitor.finish()
    _record(tracker, ledger, run_id, trial_id, result)
    return EXIT["done"]


def model_summary(cfg: RunConfig) -> str:
    """The network as built for this trial, its cost and its SE blocks by paper name."""
    channels, size, classes = input_shape(cfg)
    with torch.device("meta"):
        net = build_model(cfg.model.name, cfg.model_options(channels, classes))
    c = cost(cfg)
    blocks = ", ".join(f"{n} ({b.channels}→{b.fc1.out_channels})" for n, b in se_blocks(net).items()) or "none"
    head = f"{cfg.model.name}: {c.params:,} params, {c.gflops:.4f} GFLOPs at {channels}×{size}×{size}"
    return f"{head}\nSE blocks (channels→hidden): {blocks}\n\n{net}\n"


def _record(tracker: Tracker, ledger: Ledger, run_id: str, trial_id: int, result: RunResult) -> None:
    tracker.log_summary(run_id, result.summary, result.status)
    if result.notes:
        tracker.log_text(run_id, "\n".join(result.notes), "notes.txt")
    tracker.end(run_id, "FINISHED")
    value = result.summary.get("final_val_top1_err", float("nan"))
    ledger.complete(trial_id, value, {"outcome": result.status, "run_id": run_id})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.worker")
    p.add_argument("--trial-id", type=int, required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--parent-run", required=True)
    p.add_argument("--storage", help=f"ledger URL; default ${STORAGE_ENV} (keeps passwords out of the process list)")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--results", type=Path, required=True)
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    storage = a.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        p.error(f"give --storage or set {STORAGE_ENV}")
    return run_trial(a.trial_id, a.study, a.parent_run, storage, a.tracking_uri, a.results)


if __name__ == "__main__":
    sys.exit(main())
