"""One warm worker on its own: how its attempts end when it is stopped right after a claim, or when its heartbeat
dies while it trains. Real ledger (a journal file), real MLflow store (SQLite), a real worker process where a signal
must arrive at an exact point (the failpoint sends it)."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ablations.outcomes import Ending, Standing
from ablations.paths import CHECKPOINT, RESULT, STORAGE_ENV, TRACKING_ENV, TRAIN_LOG, run_dir
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.manifest import EXIT_RECYCLE, EXIT_STOPPED, Manifest
from ablations.sweep.reconcile import Reconciler, queue_again
from ablations.sweep.slots import Slot
from ablations.sweep.status import classify_attempts, ticket_of
from ablations.sweep.worker import Worker
from ablations.training import engine
from tests._support.configs import write_spec
from tests._support.processes import ENV
from tests._support.stores import local_ledger

pytestmark = pytest.mark.slow


def _one_queued_trial(tmp_path: Path, **sections):
    """A study of one tiny trial, queued in a new ledger; its manifest written as a sweep writes it."""
    spec = load_spec(write_spec(tmp_path, name="one", grid={"se.excitation": ["sigmoid"]}, seeds=1, **sections))
    [trial] = expand(spec)
    results = tmp_path / "results"
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(trial))
    manifest = Manifest(spec.name, None, {trial.key: ticket_of(trial)}, max_retries=0)
    return trial, results, ledger, manifest


def test_a_sigterm_just_after_a_claim_ends_the_attempt_stopped(tmp_path):
    """Item 14: a SIGTERM (the sweep's Ctrl-C) that reached a worker between its claim and the start of training
    escaped the attempt's handler: the worker exited holding a RUNNING attempt, which the next reconcile pass
    ended as a crash (using a retry). Now the stop waits for the attempt's handler: `stopped`, no retry used."""
    trial, results, ledger, manifest = _one_queued_trial(tmp_path)
    path = manifest.write(results)
    env = {**ENV, STORAGE_ENV: local_ledger(results), TRACKING_ENV: f"sqlite:///{results / 'mlflow.db'}",
           "SENET_ABLATE_FAILPOINT": "after_claim:sigterm"}  # fmt: skip
    cmd = [sys.executable, "-m", "ablations.sweep.worker", "--manifest", str(path), "--results", str(results),
           "--slot", "0"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_STOPPED, done.stderr
    found, _ = Reconciler(ledger, lambda _: None).reconcile(manifest.tickets, max_retries=0)
    first = found[0]
    assert (first.state, first.kind, first.reason) == (TrialState.FAIL, Ending.STOPPED, "stopped by SIGTERM")
    assert classify_attempts(found, max_retries=0) == Standing.PENDING  # no retry used: queued again
    assert [a.state for a in found[1:]] == [TrialState.WAITING]


def test_a_dead_heartbeat_stops_training_and_ends_the_attempt_as_a_crash(tmp_path, monkeypatch):
    """Item 16: a heartbeat thread that failed (anything but a lost lease) only printed a line and went on, while
    training went on without its lease being renewed until others judged it lost. Now the attempt ends at the
    next epoch boundary, before that epoch's checkpoint, as a crash that says why."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "0.05")  # the new ledger's heartbeat period
    trial, results, ledger, manifest = _one_queued_trial(tmp_path, train={"epochs": 3})
    broke = threading.Event()

    def heartbeat(self, attempt, **progress):  # the heartbeat thread's beats fail (checks before a save too)
        broke.set()
        raise RuntimeError("the ledger driver broke")

    real_epoch, epochs = engine.train_one_epoch, []

    def first_epoch_outlives_the_heartbeat(run, epoch, *args, **kwargs):
        if not epochs:
            assert broke.wait(60)
            for t in threading.enumerate():  # let the thread finish failing (it ends when it dies)
                if t.name == "heartbeat":
                    t.join(timeout=10)
        epochs.append(epoch)
        return real_epoch(run, epoch, *args, **kwargs)

    monkeypatch.setattr(Ledger, "heartbeat", heartbeat)
    monkeypatch.setattr(engine, "train_one_epoch", first_epoch_outlives_the_heartbeat)
    worker = Worker(manifest, results, Slot(0), local_ledger(results), f"sqlite:///{results / 'mlflow.db'}")
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == Ending.CRASH
    ended = ledger.attempt(attempt.trial_id)
    assert ended.state == TrialState.FAIL and ended.kind == Ending.CRASH
    assert "heartbeat" in ended.reason and "the ledger driver broke" in ended.reason
    assert epochs == [0]  # training stopped after the epoch it was in ...
    folder = run_dir(results, trial.key)
    assert not (folder / CHECKPOINT).exists() and not (folder / RESULT).exists()  # ... and wrote nothing unleased


@pytest.mark.e2e
def test_a_trial_blocked_in_a_read_ends_stalled_and_its_worker_is_replaced(tmp_path, monkeypatch):
    """Item 10: a trial blocked in a read kept beating and held its lease forever: the sweep never ended. Now the
    heartbeat sees no training step for the stall time and ends the attempt `stalled`; the worker exits to be
    replaced (a blocked thread cannot be interrupted)."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "0.3")  # the new ledger's heartbeat period: the stall is seen soon
    trial, results, ledger, manifest = _one_queued_trial(tmp_path)
    path = manifest.write(results)
    env = {**ENV, STORAGE_ENV: local_ledger(results), TRACKING_ENV: f"sqlite:///{results / 'mlflow.db'}",
           "SENET_ABLATE_FAILPOINT": "after_epoch:hang", "SENET_ABLATE_STALL_S": "8",
           "SENET_ABLATE_HEARTBEAT_S": "0.3"}  # fmt: skip
    cmd = [sys.executable, "-m", "ablations.sweep.worker", "--manifest", str(path), "--results", str(results),
           "--slot", "0"]  # fmt: skip
    # the stall is 100 median batch times past the 8 s floor: on a loaded host a batch can take a second
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_RECYCLE, done.stderr
    [first] = ledger.attempts()
    assert (first.state, first.kind) == (TrialState.FAIL, Ending.STALLED), first
    assert first.reason.startswith("no training step for") and first.steps > 0
    assert "stalled" in (run_dir(results, trial.key) / TRAIN_LOG).read_text()


def test_a_worker_refuses_a_trial_whose_data_files_are_not_the_ones_its_key_holds(tmp_path):
    """Item 7 across hosts: the key holds the digest of the dataset's files where the sweep planned; a host whose
    `data.root` holds another copy (here: the same folder relabelled after planning) trained another trial under the
    key. Now the attempt ends `config`, naming the files; with the planned files back it trains."""
    from tests._support.datasets import fashion_arrays, write_fashion

    data = tmp_path / "fashion"
    write_fashion(data)
    trial, results, ledger, manifest = _one_queued_trial(
        tmp_path,
        data={
            "dataset": "fashion_mnist",
            "root": str(data),
            "train_subset": 64,
            "val_subset": 16,
            "test_subset": 16,
            "augment": False,
        },  # fmt: skip
    )
    assert ticket_of(trial).data_files and ticket_of(trial).data_files.startswith("sha256:")
    arrays = fashion_arrays()
    arrays["train-labels-idx1-ubyte"] = (arrays["train-labels-idx1-ubyte"] + 1) % 10
    write_fashion(data, arrays=arrays)  # another host's copy: relabelled
    worker = Worker(manifest, results, Slot(0), local_ledger(results), f"sqlite:///{results / 'mlflow.db'}")
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == Ending.CONFIG
    ended = ledger.attempt(attempt.trial_id)
    assert ended.kind == Ending.CONFIG and ended.reason.startswith("data.files: the fashion_mnist files this host")
    assert str(data) in ended.reason
    write_fashion(data)  # the planned files back: the next attempt trains
    [again] = queue_again(ledger, [trial], {trial.key})
    second = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(second) == Ending.FINISHED, ledger.attempt(second.trial_id).reason
