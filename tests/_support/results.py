"""A results folder in every state a study can leave, made in-process the way workers make it (no sweep, no worker
process): two trials trained for real and recorded in the ledger and MLflow, one running (its lease held), one
failed, one queued again after a stop and one never queued, each with what a worker leaves in its folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ablations.config import Host
from ablations.outcomes import Ending, RunStatus
from ablations.paths import CHECKPOINT, run_dir
from ablations.study.load import load_spec
from ablations.study.trials import Trial, plan_trials
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.repair import trial_info
from ablations.sweep.start import record
from ablations.sweep.status import ticket_of
from ablations.tracking import Tracker
from ablations.training.checkpoint import save_checkpoint
from ablations.training.engine import train
from tests._support.configs import write_spec

STUDY = "outs"
GRID = {"se.excitation": ["sigmoid", "tanh"]}
SET_ASIDE = f"{CHECKPOINT}.unloadable-20250101T000000Z"  # what a restart after a torn checkpoint leaves
TORN = f".{CHECKPOINT}.abc123.tmp"  # a checkpoint write a kill interrupted
EPOCHS = 1


@dataclass(frozen=True)
class Made:
    spec: Path
    results: Path
    trials: list[Trial]  # done: 0 and 1; running 2; failed 3; queued again 4; never queued 5
    run_ids: dict[str, str]  # key → MLflow run of the trials that made one

    def folder(self, i: int) -> Path:
        return run_dir(self.results, self.trials[i].key)


def _resume_checkpoint(folder: Path, epoch: int) -> None:
    """A checkpoint of a trial that is not finished (its optimizer state is what it resumes from)."""
    w = torch.ones(64, 64)
    save_checkpoint({"model": {"w": w}, "optimizer": {"state": {0: {"momentum_buffer": w.clone()}}}, "epoch": epoch,
                     "history": [], "config_hash": "x", "seed": 0}, folder / CHECKPOINT)  # fmt: skip


def make_results(root: Path) -> Made:
    spec_path = write_spec(root, STUDY, grid=GRID, seeds=3, train={"epochs": EPOCHS})
    results = root / "results"
    spec = load_spec(spec_path)
    trials = sorted(plan_trials(spec, {}, Host("cpu")), key=lambda t: (t.seed, t.label))
    ledger = Ledger.open(str(results / "ledger.db"))
    record(ledger, spec, trials, Host("cpu"), {})
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
    parent = tracker.make_parent(STUDY, spec.description, {})
    run_ids = {}
    for i, t in enumerate(trials):
        folder = run_dir(results, t.key)
        if i == 5:
            continue  # never queued
        ledger.enqueue(ticket_of(t))
        attempt = ledger.claim({t.key}, Owner.me())
        assert attempt is not None
        run_ids[t.key] = tracker.start_trial(STUDY, parent, trial_info(attempt), {})
        ledger.update(attempt, run_id=run_ids[t.key])
        folder.mkdir(parents=True, exist_ok=True)
        if i < 2:  # trained for real: the checkpoint and result.json a worker leaves, recorded as `_record` does
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a network this small trains faster on one thread than on a shared machine's
            try:
                result = train(t.config, folder, log=lambda _: None)
            finally:
                torch.set_num_threads(threads)
            value = result.summary["final_val_top1_err"]
            ledger.complete(attempt, value, Ending(result.status), result=dataclasses.asdict(result))
            tracker.log_summary(run_ids[t.key], result.summary, Ending(result.status))
            tracker.end(run_ids[t.key], RunStatus.FINISHED)
            (folder / "train.log").write_text("epoch 1\nepoch 2\n")
        else:
            _resume_checkpoint(folder, 1)
        if i == 0:
            (folder / SET_ASIDE).write_bytes(b"x" * 3000)
            (folder / TORN).write_bytes(b"y" * 2000)
        if i == 3:
            ledger.fail(attempt, Ending.CONFIG, "data.root: damaged")
            tracker.end(run_ids[t.key], RunStatus.FAILED, "config: data.root: damaged")
        if i == 4:  # stopped mid-training, queued again: pending, resumes from its checkpoint
            ledger.fail(attempt, Ending.STOPPED, "stopped by SIGTERM")
            tracker.end(run_ids[t.key], RunStatus.KILLED, "stopped")
            ledger.enqueue(dataclasses.replace(ticket_of(t), number=2))
    ledger.close()
    return Made(spec_path, results, trials, run_ids)


def copy_results(made: Made, dest: Path) -> Made:
    """`made` copied under `dest` (its ledger closed, so the copy is whole), for a test that changes it."""
    import shutil

    shutil.copytree(made.results, dest / "results")
    spec = dest / made.spec.name
    shutil.copy(made.spec, spec)
    return dataclasses.replace(made, spec=spec, results=dest / "results")


def fingerprint(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
