"""Fault injection: the runner's promise that a kill at any moment loses nothing and duplicates nothing.

Each storage (the journal file, and PostgreSQL when it can be started) gets 20 rounds with a fixed seed: start
a sweep (sometimes with a joining worker), kill the controller, a worker, or everything, at a random moment,
with SIGKILL or SIGTERM, sometimes corrupt a checkpoint; then do what a rerun does first (reconcile) and check:
no trial duplicated, none lost, no RUNNING MLflow run without a live worker, every checkpoint loadable. A last
sweep then finishes everything exactly once.
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

from ablations.training import engine as train_mod
from ablations.sweep import worker
from ablations.training.checkpoint import load_checkpoint
from ablations.cli import main
from ablations.sweep.ledger import CLAIM_GRACE_S, Ledger, open_storage
from ablations.sweep.runner import Sweep, SweepOptions
from ablations.spec import expand, load_spec
from ablations.tracking import Tracker
from tests.ablations.postgres import start_postgres
from tests.ablations.test_runner import ENV, write_spec

pytestmark = [pytest.mark.slow, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 20
SEED = 20261121
TORN = b"torn"


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


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _launch(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**ENV, "PYTHONPATH": str(ROOT)})  # fmt: skip


def _invariants(spec_path: Path, storage: str, results: Path, planted: set[Path] = frozenset()) -> dict[str, int]:
    """Reconcile as a rerun does, then check the promises; returns counts for the record."""
    spec = load_spec(spec_path)
    trials = expand(spec)
    sweep = Sweep(spec, trials, SweepOptions(results=results, storage=storage, max_retries=100))
    sweep.prepare()
    sweep.reconcile()
    ledger = Ledger(open_storage(storage))
    if any(e.state == TrialState.RUNNING for e in ledger.entries()):
        # A claimer killed before naming itself: a rerun keeps reconciling and frees it after the claim grace.
        time.sleep(CLAIM_GRACE_S + 1)
        sweep.reconcile()
    entries = ledger.entries()
    complete = Counter(e.key for e in entries if e.state == TrialState.COMPLETE)
    assert all(n == 1 for n in complete.values()), f"duplicated in the ledger: {complete}"
    assert not [e for e in entries if e.state == TrialState.RUNNING], "RUNNING trial without a live worker"
    waiting = {e.key for e in entries if e.state == TrialState.WAITING}
    lost = [t.key for t in trials if t.key not in complete and t.key not in waiting]
    assert not lost, f"lost trials: {lost}"
    runs = Tracker(sweep.uri, results).runs_frame()
    if "tags.senet.trial_key" in runs:  # absent while only the parent run exists
        trial_runs = runs[runs["tags.senet.role"] == "trial"]
        assert not (trial_runs["status"] == "RUNNING").any(), "RUNNING MLflow run without a live worker"
        finished = Counter(trial_runs[trial_runs["status"] == "FINISHED"]["tags.senet.trial_key"])
        assert all(n == 1 for n in finished.values()), f"duplicated in MLflow: {finished}"
        assert set(finished) == set(complete), "ledger and MLflow disagree on what finished"
    else:
        assert not complete, "COMPLETE in the ledger without an MLflow run"
    for ckpt in results.glob("runs/*/checkpoint.pt"):
        if ckpt in planted and ckpt.read_bytes() == TORN:
            continue  # torn on purpose; its next attempt must restart from scratch and say so
        load_checkpoint(ckpt)  # raises if a kill left a torn file
    return {"complete": len(complete), "duplicates": 0, "lost": 0}


def _storage(kind: str, request) -> str:
    if kind == "journal":
        return ""
    pg, why = start_postgres()
    if pg is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    request.addfinalizer(pg.stop)
    return pg.createdb("faults")


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_random_kills_lose_nothing_and_duplicate_nothing(kind, tmp_path, request):
    storage_url = _storage(kind, request)
    results = tmp_path / "results"
    storage = storage_url or str(results / "ledger.journal")
    spec = write_spec(tmp_path, name=f"faults_{kind}", train={"epochs": 3}, data={"synthetic_train": 320})
    rng = random.Random(SEED)
    common = ["--results", str(results), "--storage", storage, "--no-progress", "--max-retries", "100"]
    kills = corruptions = 0
    planted: set[Path] = set()
    for _ in range(ROUNDS):
        procs = [_launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path)]
        if rng.random() < 0.3:
            time.sleep(0.5)
            procs.append(_launch("worker", str(spec), *common, cwd=tmp_path))
        time.sleep(rng.uniform(1.0, 6.0))
        sig = signal.SIGKILL if rng.random() < 0.75 else signal.SIGTERM
        victim = rng.choice(["controller", "worker", "everything"])
        workers = [p for p in _pids_with(str(results)) if p not in {q.pid for q in procs}]
        targets = {"controller": [procs[0].pid], "worker": workers[:1] or [procs[0].pid],
                   "everything": [*(p.pid for p in procs), *workers]}[victim]  # fmt: skip
        for pid in targets:
            _kill(pid, sig)
        kills += len(targets)
        time.sleep(rng.uniform(0.0, 1.5))
        for pid in _pids_with(str(results)):  # end the round: nothing of it may survive into the check
            _kill(pid, signal.SIGKILL)
        for p in procs:
            p.wait()
        time.sleep(0.2)
        done = {e.key for e in Ledger(open_storage(storage)).entries() if e.state == TrialState.COMPLETE}
        ckpts = sorted(c for c in results.glob("runs/*/checkpoint.pt") if c.parent.name not in done)
        if ckpts and rng.random() < 0.25:
            victim_ckpt = rng.choice(ckpts)
            victim_ckpt.write_bytes(TORN)
            planted.add(victim_ckpt)
            corruptions += 1
        _invariants(spec, storage, results, planted)
    final = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--workers", "2", *common],
                           cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stderr
    record = _invariants(spec, storage, results)
    assert record["complete"] == 4
    logs = "".join(p.read_text() for p in results.glob("runs/*/worker.log"))
    if corruptions:  # a torn checkpoint of an unfinished trial is read by its next attempt, which says so
        assert "restarting from scratch" in logs
    figures = {"storage": kind, "rounds": ROUNDS, "kills": kills, "corrupted_checkpoints": corruptions,
               "trials": 4, **record}  # fmt: skip
    (tmp_path.parent / f"faults-{kind}.json").write_text(json.dumps(figures))
    print(f"\nfault injection {figures}")


def test_a_torn_checkpoint_restarts_the_trial_from_scratch_and_says_so(tmp_path):
    spec = write_spec(tmp_path, name="torn", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress"]
    proc = _launch("sweep", str(spec), *common, cwd=tmp_path)
    ckpt = _wait(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    _wait(lambda: load_checkpoint(ckpt)["epoch"] >= 1)
    for pid in _pids_with(str(results)):  # the host goes down mid-trial...
        _kill(pid, signal.SIGKILL)
    proc.wait()
    ckpt.write_bytes(TORN)  # ...and its checkpoint is left torn
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    again = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), *common], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    log = (ckpt.parent / "worker.log").read_text()
    assert "checkpoint is unreadable" in log and "restarting from scratch" in log
    assert load_checkpoint(ckpt)["epoch"] == 4
    assert _invariants(spec, str(results / "ledger.journal"), results)["complete"] == 1


def _wait(predicate, timeout: float = 120.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
        except Exception:  # a checkpoint being replaced at this very moment
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_disk_full_mid_trial_fails_clearly_and_resumes_later(tmp_path, monkeypatch):
    spec_path = write_spec(tmp_path, name="diskfull", grid={"se.excitation": ["sigmoid"]}, seeds=1,
                           train={"epochs": 3})  # fmt: skip
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    sweep = Sweep(spec, expand(spec), SweepOptions(results=results))
    sweep.prepare()
    sweep.reconcile()
    entry = sweep.ledger.claim(spec.name)
    real, calls = train_mod.save_checkpoint, []

    def full_on_second(state, path):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", full_on_second)
    code = worker.run_trial(entry.trial_id, spec.name, sweep.parent_id, sweep.storage_url, sweep.uri, results)
    assert code == worker.EXIT["error"]
    attrs = sweep.ledger.attrs(entry.trial_id)
    assert attrs["kind"] == "error" and "No space left on device" in attrs["reason"]
    ckpt = next(results.glob("runs/*/checkpoint.pt"))
    assert load_checkpoint(ckpt)["epoch"] == 1  # the epoch-1 checkpoint survived intact
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    assert main(["sweep", str(spec_path), "--results", str(results), "--no-progress"]) == 0
    assert "resumed after epoch 1" in (ckpt.parent / "worker.log").read_text()


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
