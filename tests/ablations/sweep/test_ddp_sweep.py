"""Trials of `train.devices` > 1 in a sweep: a gloo group of CPU processes per trial, one attempt for the whole
group (a rank's death ends it and the next resumes from the checkpoint), and a queue that mixes packed small trials
with group trials on stand-in GPUs without deadlock."""

from __future__ import annotations

import re
import signal
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from tests._support.configs import write_spec
from tests._support.processes import cli, wait_for
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger, tracker

pytestmark = pytest.mark.slow


def _ranks(pid: int) -> list[psutil.Process]:
    """The group's rank processes under a worker (spawned by torch's launcher)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def test_killing_one_rank_ends_the_attempt_and_the_next_resumes_from_the_checkpoint(tmp_path):
    """Budget: about 40 s. The rank is killed with SIGKILL mid-epoch 2, after epoch 1's checkpoint."""
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1,
                      train={"epochs": 3, "devices": 2, "device": "cpu"}, data={"synthetic_train": 1056})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    live = wait_for(lambda: next(results.glob("runs/*/progress.json"), None), timeout=120)
    folder = live.parent
    wait_for(lambda: (folder / "checkpoint.pt").exists() and "epoch 1/3" in (folder / "train.log").read_text(),
             timeout=120, every=0.05)  # fmt: skip
    running = wait_for(lambda: [a for a in attempts(local_ledger(results)) if a.state == TrialState.RUNNING])
    ranks = wait_for(lambda: _ranks(running[0].owner.pid))
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 1)
    ended = sorted(attempts(local_ledger(results)), key=lambda a: a.ticket.number)
    assert [a.state for a in ended] == [TrialState.FAIL, TrialState.COMPLETE] and ended[0].kind == "crash"
    assert "a rank of the 2-device group failed" in ended[0].reason
    runs = tracker(results).trial_runs()
    assert sorted(r.status for r in runs) == ["FAILED", "FINISHED"]
    log = (folder / "train.log").read_text()
    assert "resumed after epoch 1" in log or "resumed in epoch 2" in log
    finished = next(r for r in runs if r.status == "FINISHED")
    assert finished.metrics["epochs"] == 3
    assert not any(_ranks(a.owner.pid) for a in ended if a.owner is not None)  # no rank outlives its attempt


@pytest.mark.e2e
def test_kill_9_of_the_worker_takes_its_ranks_with_it_and_the_trial_resumes(tmp_path):
    """Budget: about 40 s. The worker (the group's agent, holding the lease) dies by SIGKILL mid-epoch 2: its ranks
    die with it (none writes on), the sweep judges the attempt a crash and the retry resumes from the checkpoint.
    (Epochs of 4,224 images, 1-3 s here: the trial is still training when the kill comes.)"""
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1,
                      train={"epochs": 3, "devices": 2, "device": "cpu"}, data={"synthetic_train": 4224})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    log = wait_for(lambda: next(results.glob("runs/*/train.log"), None), timeout=120)
    wait_for(lambda: "epoch 1/3" in log.read_text(), timeout=120, every=0.05)
    owner = wait_for(lambda: [a for a in attempts(local_ledger(results)) if a.state == TrialState.RUNNING])[0].owner
    ranks = wait_for(lambda: _ranks(owner.pid))
    psutil.Process(owner.pid).send_signal(signal.SIGKILL)
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, "a rank outlived its worker"
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 1)
    assert "resumed after epoch" in log.read_text() or "resumed in epoch" in log.read_text()


def test_a_stop_pauses_every_rank_at_one_step_and_the_rerun_resumes_mid_epoch(tmp_path):
    """Budget: about 40 s. Ctrl-C of the sweep while a 2-device trial trains epoch 2: the ranks agree on a step,
    rank 0 checkpoints there, the attempt ends `stopped` (no retry used) with no rank left, and the rerun goes on
    from that step to one FINISHED run. (An epoch of 4,224 8×8 images takes 1-3 s here: the stop, passed from the
    sweep to the worker to the ranks' next agreement, lands within the epoch after the first, whichever it is.)"""
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1,
                      train={"epochs": 4, "devices": 2, "device": "cpu"}, data={"synthetic_train": 4224})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", "--max-retries", "0", cwd=tmp_path)
    log = wait_for(lambda: next(results.glob("runs/*/train.log"), None), timeout=120)
    wait_for(lambda: "epoch 1/4" in log.read_text(), timeout=120, every=0.05)
    owner = wait_for(lambda: [a for a in attempts(local_ledger(results)) if a.state == TrialState.RUNNING])[0].owner
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ledger = attempts(local_ledger(results))
    assert [(a.state, a.kind) for a in ledger] == [(TrialState.FAIL, "stopped")]
    paused = re.search(r"paused at epoch (\d+), step (\d+)", ledger[0].reason)
    assert paused and int(paused[1]) in (2, 3) and int(paused[2]) > 0, ledger[0].reason  # mid-epoch, after the first
    assert not _ranks(owner.pid)
    rerun = cli("sweep", str(spec), "--results", str(results), "--no-progress", "--max-retries", "0", cwd=tmp_path)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 1)
    assert f"resumed in epoch {paused[1]} at step {paused[2]}" in log.read_text()


def _trained(folder: Path) -> tuple[datetime, datetime]:
    """When the trial's training began and ended, from its train.log (after its devices were held)."""
    stamps = {}
    for line in (folder / "train.log").read_text().splitlines():
        for word in ("start:", "end:"):
            if line[20:].startswith(word):
                stamps[word] = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
    return stamps["start:"], stamps["end:"]


@pytest.mark.e2e  # a minute of six trials in subprocesses: `make e2e` (make test's 10 minutes)
def test_a_queue_of_packed_small_trials_and_two_device_trials_never_deadlocks(tmp_path):
    """Budget: about 60 s. Two stand-in GPUs, two workers on each; three trials of 2 devices among three small ones.
    A group trial holds both GPUs alone: no other trial trains while it does, and every trial ends once."""
    spec = write_spec(tmp_path, grid={"train.devices": [1, 2], "se.excitation": ["sigmoid", "tanh", "relu"]},
                      seeds=[0], train={"device": "cpu"})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", "--gpus", "0,1",
               "--trials-per-gpu", "2", cwd=tmp_path)  # fmt: skip
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 6)
    spans = {}
    for a in attempts(local_ledger(results)):
        folder = results / "runs" / a.key
        spans[a.key] = (int(a.ticket.config["train"].get("devices", 1)), _trained(folder))
    groups = [span for devices, span in spans.values() if devices == 2]
    assert len(groups) == 3
    for begin, end in groups:
        for _, (b, e) in spans.values():
            if (b, e) != (begin, end):
                assert e <= begin or b >= end, "a trial trained while a 2-device trial held both GPUs"
    held = [f.read_text() for f in results.glob("runs/*/train.log") if "holding GPUs 0,1" in f.read_text()]
    assert len(held) == 3
