"""Fault injection: a sweep loses nothing, duplicates nothing and hangs on nothing, whatever is killed or paused.

Each storage (the journal file, and PostgreSQL when it can be started) gets seeded rounds. A round starts a sweep
(sometimes a joining worker on a second "host" that shares our hostname), then injects one fault:

- kill: SIGKILL or SIGTERM of the controller, a worker, or everything, at a random moment;
- pause: SIGSTOP of a worker for longer than the ledger's grace, then SIGCONT (its lease is taken away);
- orphan: the controller killed with its workers alive, then the same command rerun (it adopts them);
- race: two controllers started at the same instant (two reconcilers);
- crash-after-complete: workers that die between the ledger's COMPLETE and MLflow's FINISHED;
- twin host: a joiner with another host id but our hostname, killed outright (judged by heartbeat, not pid);
- torn journal tail (journal) / PostgreSQL restart mid-claim (PostgreSQL).

Then, as a rerun would, it reconciles and repairs, and checks: no trial FINISHED twice, none lost, nothing left
RUNNING, no trial failed for a harness reason, every COMPLETE trial with exactly one FINISHED run, every
checkpoint loadable. A last sweep then finishes everything exactly once.
"""

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ablations.cli import main
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.reconcile import Reconciler
from ablations.sweep.repair import end_runs, repair
from ablations.sweep.status import ticket_of
from ablations.sweep.worker import Worker
from ablations.tracking import Tag, Tracker
from ablations.training import engine as train_mod
from ablations.training.checkpoint import load_checkpoint
from tests._support.configs import write_spec
from tests._support.processes import ENV, wait_for
from tests._support.stores import local_ledger, tracker

pytestmark = [pytest.mark.slow, pytest.mark.faults]
ROUNDS = 20
SEED = 20261122
TORN = b"torn"
FAST = {"SENET_ABLATE_HEARTBEAT_S": "0.5"}  # the ledger's grace: 2 s
KINDS = ["kill", "kill", "kill", "pause", "orphan", "race", "crash_after_complete", "twin", "store_fault"]


@pytest.fixture(autouse=True)
def _fast_ledgers(monkeypatch):
    """Whoever creates a ledger (a sweep, or this test reading one first) gives it the fast heartbeat."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", FAST["SENET_ABLATE_HEARTBEAT_S"])


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (our results folder): the round's survivors."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _launch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**ENV, **FAST, **(env or {})})  # fmt: skip


def _workers(results: Path, exclude: set[int]) -> list[int]:
    return [p for p in _pids_with(str(results)) if p not in exclude and b"sweep.worker" in _cmd(p)]


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def invariants(spec_path: Path, storage: str, uri: str, results: Path, planted: set[Path] = frozenset()) -> dict:
    """Reconcile and repair as a rerun does first, then check the promises; returns counts for the record."""
    spec = load_spec(spec_path)
    trials = expand(spec)
    tickets = {t.key: ticket_of(t) for t in trials}
    ledger, tracker_ = Ledger.open(storage), Tracker(uri, results)
    reconciler = Reconciler(ledger, lambda _: None)
    deadline = time.monotonic() + ledger.liveness.grace_s + 15
    while True:  # a dead foreign host's attempt is ended only after the grace, on our own clock
        found, ended = reconciler.reconcile(tickets, max_retries=1000)
        end_runs(tracker_, ended)
        if not any(a.state == TrialState.RUNNING for a in found) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    parent = tracker_.find_parent(spec.name)
    repair(tracker_, ledger, found, set(tickets), results, spec.name, parent, {}, lambda _: None)
    complete = Counter(a.key for a in found if a.state == TrialState.COMPLETE)
    assert all(n == 1 for n in complete.values()), f"duplicated in the ledger: {complete}"
    assert not [a for a in found if a.state == TrialState.RUNNING], "RUNNING attempt without a live worker"
    waiting = {a.key for a in found if a.state == TrialState.WAITING}
    lost = [k for k in tickets if k not in complete and k not in waiting]
    assert not lost, f"lost trials: {lost}"
    harness = [a for a in found if a.state == TrialState.FAIL and not _injected(a)]
    assert not harness, f"failed for a harness reason: {[(a.kind, a.reason) for a in harness]}"
    runs = tracker_.trial_runs(set(tickets))
    assert not [r for r in runs if r.status == "RUNNING"], "RUNNING MLflow run without a live worker"
    finished = Counter(r.key for r in runs if r.status == "FINISHED")
    assert finished == Counter(set(complete)), f"ledger and MLflow disagree: {finished} vs {complete}"
    for ckpt in results.glob("runs/*/checkpoint.pt"):
        if ckpt in planted and ckpt.read_bytes() == TORN:
            continue  # torn on purpose; its next attempt must restart from scratch and say so
        load_checkpoint(ckpt)  # raises if a kill left a torn file
    return {"complete": len(complete), "failed_attempts": sum(a.state == TrialState.FAIL for a in found)}


def _injected(a) -> bool:
    """An attempt ended by a fault we injected: a worker killed (crash: died mid-trial), paused or on a dead host
    (lost), or stopped by our SIGTERM."""
    return (a.kind == "crash" and "died mid-trial" in a.reason) or a.kind in ("lost", "stopped")


def _storage(kind: str, request) -> tuple[str, object]:
    if kind == "journal":
        return "", None
    pg = request.getfixturevalue("pg")
    return pg.createdb(f"faults{random.randrange(10**9)}"), pg


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_random_faults_lose_nothing_duplicate_nothing_and_hang_on_nothing(kind, tmp_path, request):
    url, pg = _storage(kind, request)
    results = tmp_path / "results"
    storage = url or local_ledger(results)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    spec = write_spec(tmp_path, name=f"faults_{kind}", train={"epochs": 3}, data={"synthetic_train": 320})
    rng = random.Random(SEED)
    common = ["--results", str(results), "--storage", storage, "--no-progress", "--max-retries", "1000"]
    tally: Counter[str] = Counter()
    planted: set[Path] = set()
    for _ in range(ROUNDS):
        fault = rng.choice(KINDS)
        tally[fault] += 1
        env = {"SENET_ABLATE_FAILPOINT": "after_complete"} if fault == "crash_after_complete" else {}
        procs = [_launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path, env=env)]
        if fault == "race":
            procs.append(_launch("sweep", str(spec), "--workers", "1", *common, cwd=tmp_path))
        if fault == "twin" or rng.random() < 0.2:
            with contextlib.suppress(AssertionError):  # a joiner joins a sweep whose trials are in the ledger
                wait_for(lambda: Ledger.open(storage).attempts(), timeout=15, every=0.3)
            procs.append(_launch("worker", str(spec), *common, cwd=tmp_path, env={"SENET_ABLATE_HOST_ID": "twin"}))
        time.sleep(rng.uniform(6.0, 10.0))  # past the start-up (imports) into training
        ours = {p.pid for p in procs}
        workers = _workers(results, ours)
        if fault == "kill":
            sig = signal.SIGKILL if rng.random() < 0.75 else signal.SIGTERM
            victim = rng.choice(["controller", "worker", "everything"])
            targets = {"controller": [procs[0].pid], "worker": workers[:1] or [procs[0].pid],
                       "everything": [*ours, *workers]}[victim]  # fmt: skip
            for pid in targets:
                _signal(pid, sig)
            tally["kills"] += len(targets)
            time.sleep(rng.uniform(0.0, 1.5))
        elif fault == "pause" and workers:
            victim = rng.choice(workers)
            _signal(victim, signal.SIGSTOP)
            time.sleep(5.0)  # past the 2 s grace: its attempt is taken away and queued again
            _signal(victim, signal.SIGCONT)  # it finds out at its next heartbeat or checkpoint and stops quietly
            time.sleep(rng.uniform(1.0, 3.0))
        elif fault == "orphan":
            _signal(procs[0].pid, signal.SIGKILL)
            procs[0].wait()
            rerun = _launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path)
            procs.append(rerun)
            time.sleep(rng.uniform(3.0, 8.0))
        elif fault == "twin":
            twins = [p.pid for p in procs if b"worker" in _cmd(p.pid)]
            for pid in [*twins, *(w for w in workers if _env_has(w, b"SENET_ABLATE_HOST_ID=twin"))]:
                _signal(pid, signal.SIGKILL)  # the other "host" dies without a word
            time.sleep(rng.uniform(0.5, 2.0))
        elif fault == "store_fault" and pg is not None:
            pg.restart()  # mid-claim, mid-heartbeat, mid-result
            time.sleep(rng.uniform(1.0, 3.0))
        elif fault == "store_fault":
            for pid in _pids_with(str(results)):
                _signal(pid, signal.SIGKILL)
            with open(storage, "ab") as f:
                f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "user_att')  # a torn last record
            tally["torn_records"] += 1
        for pid in _pids_with(str(results)):  # end the round: nothing of it may survive into the check
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        for p in procs:
            p.wait()
        time.sleep(0.2)
        done = {a.key for a in Ledger.open(storage).attempts() if a.state == TrialState.COMPLETE}
        ckpts = sorted(c for c in results.glob("runs/*/checkpoint.pt") if c.parent.name not in done)
        if ckpts and rng.random() < 0.25:
            victim_ckpt = rng.choice(ckpts)
            victim_ckpt.write_bytes(TORN)
            planted.add(victim_ckpt)
            tally["torn_checkpoints"] += 1
        invariants(spec, storage, uri, results, planted)
    final = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--workers", "2", *common],
                           cwd=tmp_path, env={**ENV, **FAST}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stderr
    record = invariants(spec, storage, uri, results)
    assert record["complete"] == 4
    logs = "".join(p.read_text() for p in results.glob("runs/*/train.log"))
    if tally["torn_checkpoints"]:  # a torn checkpoint of an unfinished trial is read by its next attempt
        assert "restarting from scratch" in logs
    figures = {"storage": kind, "rounds": ROUNDS, "trials": 4, "duplicates": 0, "lost": 0, "running_left": 0,
               "harness_failures": 0, **dict(tally), **record}  # fmt: skip
    (tmp_path.parent / f"faults-{kind}.json").write_text(json.dumps(figures))
    print(f"\nfault injection {figures}")


def _env_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_a_paused_worker_loses_its_lease_and_stops_quietly_when_resumed(tmp_path):
    """SIGSTOP past the grace, then SIGCONT: the trial is trained once to a result, by the worker that took it
    over; the paused one finds its lease gone, writes nothing more and ends its run KILLED as superseded."""
    spec = write_spec(tmp_path, name="pause", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 6},
                      data={"synthetic_train": 800})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress", "--max-retries", "0"]
    proc = _launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path)
    attempt = wait_for(lambda: [a for a in Ledger.open(local_ledger(results)).attempts() if a.epoch >= 1], 120)[0]
    _signal(attempt.owner.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: len(Ledger.open(local_ledger(results)).attempts()) == 2, timeout=60)  # taken away, requeued
    finally:
        _signal(attempt.owner.pid, signal.SIGCONT)
    assert proc.wait(timeout=240) == 0
    ledger = Ledger.open(local_ledger(results)).attempts()
    assert [(a.state, a.kind) for a in ledger] == [(TrialState.FAIL, "lost"), (TrialState.COMPLETE, None)]
    runs = {r.tags[Tag.ATTEMPT_ID]: r for r in tracker(results).trial_runs()}
    assert runs[str(ledger[1].trial_id)].status == "FINISHED"
    paused = tracker(results).client.get_run(runs[str(ledger[0].trial_id)].run_id)
    assert paused.info.status == "KILLED" and paused.data.tags["senet.ended_by"].startswith(("lost", "superseded"))
    # The resumed worker noticed and stopped: its last words are in the trial's log, after the new attempt began.
    log = next(results.glob("runs/*/train.log")).read_text()
    wait_for(lambda: "superseded" in next(results.glob("runs/*/train.log")).read_text(), timeout=60)
    assert "resumed after epoch" in log


def test_a_crash_between_the_ledger_and_mlflow_keeps_one_finished_run(tmp_path):
    """Item 8: an abnormal worker exit used to mark the run KILLED without looking at the ledger, so a COMPLETE
    trial could lose its FINISHED run. The ledger decides; the sweep repairs MLflow from it."""
    spec = write_spec(tmp_path, name="crashafter", seeds=1)
    results = tmp_path / "results"
    proc = _launch("sweep", str(spec), "--results", str(results), "--no-progress", "--max-retries", "0",
                   cwd=tmp_path, env={"SENET_ABLATE_FAILPOINT": "after_complete"})  # fmt: skip
    assert proc.wait(timeout=240) == 0
    ledger = Ledger.open(local_ledger(results)).attempts()
    assert [a.state for a in ledger] == [TrialState.COMPLETE] * 2
    runs = tracker(results).trial_runs()
    assert sorted(r.status for r in runs) == ["FINISHED", "FINISHED"] and all(r.outcome for r in runs)


def test_a_torn_checkpoint_restarts_the_trial_from_scratch_and_says_so(tmp_path):
    spec = write_spec(tmp_path, name="torn", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress"]
    proc = _launch("sweep", str(spec), *common, cwd=tmp_path)
    ckpt = wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    wait_for(lambda: load_checkpoint(ckpt)["epoch"] >= 1)
    for pid in _pids_with(str(results)):  # the host goes down mid-trial...
        _signal(pid, signal.SIGKILL)
    proc.wait()
    ckpt.write_bytes(TORN)  # ...and its checkpoint is left torn
    again = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), *common], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    log = (ckpt.parent / "train.log").read_text()
    assert "checkpoint is unreadable" in log and "restarting from scratch" in log
    assert load_checkpoint(ckpt)["epoch"] == 4
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert invariants(spec, local_ledger(results), uri, results)["complete"] == 1


def test_disk_full_mid_trial_fails_clearly_and_resumes_later(tmp_path, monkeypatch):
    spec_path = write_spec(tmp_path, name="diskfull", grid={"se.excitation": ["sigmoid"]}, seeds=1,
                           train={"epochs": 3})  # fmt: skip
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    [trial] = expand(spec)
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(trial))
    real, calls = train_mod.save_checkpoint, []

    def full_on_second(state, path):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", full_on_second)
    from ablations.sweep.manifest import Manifest
    from ablations.sweep.slots import Slot

    manifest = Manifest(spec.name, None, {trial.key: ticket_of(trial)}, max_retries=1)
    worker = Worker(manifest, results, Slot(0), local_ledger(results), f"sqlite:///{results / 'mlflow.db'}")
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == "crash"
    ended = ledger.attempt(attempt.trial_id)
    assert ended.kind == "crash" and "No space left on device" in ended.reason
    ckpt = next(results.glob("runs/*/checkpoint.pt"))
    assert load_checkpoint(ckpt)["epoch"] == 1  # the epoch-1 checkpoint survived intact
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    assert main(["sweep", str(spec_path), "--results", str(results), "--no-progress"]) == 0
    assert "resumed after epoch 1" in (ckpt.parent / "train.log").read_text()


def test_unwritable_results_folder_is_one_clear_line(tmp_path, capsys):
    spec = write_spec(tmp_path, name="nowrite")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["sweep", str(spec), "--results", str(blocker / "results"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"senet-ablate: error: --results: {blocker / 'results'} is not a writable folder")
    assert blocker.read_text() == "not a folder"


def test_truncated_spec_is_refused(tmp_path, capsys):
    whole = write_spec(tmp_path, name="cut").read_text()
    cut = tmp_path / "cut_half.yaml"
    cut.write_text(whole[: len(whole) // 2])
    assert main(["sweep", str(cut), "--results", str(tmp_path / "r")]) == 2
    assert str(cut) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_while_a_sweep_runs(tmp_path, capsys):
    spec = write_spec(tmp_path, name="live", train={"epochs": 3}, data={"synthetic_train": 480})
    results, out = tmp_path / "results", tmp_path / "report"
    proc = _launch("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    deadline = time.time() + 300
    reports = 0
    while proc.poll() is None and time.time() < deadline:
        if (results / "mlflow.db").exists() and (results / "ledger.journal").exists():
            assert main(["report", str(spec), "--results", str(results), "--out", str(out)]) == 0, capsys.readouterr()
            assert "SE ablation report" in (out / "README.md").read_text()
            reports += 1
        time.sleep(1)
    assert proc.wait(timeout=10) == 0
    assert reports >= 2  # at least two reports were written while trials were still running
    assert main(["report", str(spec), "--results", str(results), "--out", str(out)]) == 0
    assert "4 finished" in (out / "README.md").read_text()
