"""The sweep runner end to end: ledger, MLflow structure, resume after kills, failures and bad input.

Workers are real subprocesses training tiny models on synthetic data; the controller runs in-process or, for
the kill tests, as its own process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import yaml
from optuna.trial import TrialState

from ablations.cli import main
from ablations.ledger import Ledger, open_storage
from ablations.tracking import Tracker

pytestmark = pytest.mark.slow

BASE = {
    "model": {"name": "resnet20"},
    "se": {"reduction": 4},
    "data": {"dataset": "synthetic", "val_size": 32, "synthetic_train": 160, "synthetic_test": 32,
             "synthetic_size": 8, "synthetic_classes": 3},
    "train": {"epochs": 2, "batch_size": 32},
}  # fmt: skip


def write_spec(tmp_path: Path, name="tiny", grid=None, extra=None, seeds=2, **base_changes) -> Path:
    base = {k: dict(v) for k, v in BASE.items()}
    for section, values in base_changes.items():
        base[section].update(values)
    spec = {
        "name": name,
        "description": "tiny synthetic study for tests",
        "base": base,
        "grid": grid if grid is not None else {"se.excitation": ["sigmoid", "tanh"]},
        "seeds": seeds,
    }
    if extra is not None:
        spec["extra"] = extra
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def entries(results: Path):
    return Ledger(open_storage(str(results / "ledger.journal"))).entries()


def runs(results: Path):
    return Tracker(f"sqlite:///{results / 'mlflow.db'}", results).runs_frame()


def client(results: Path):
    return mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def assert_each_trial_complete_once(results: Path, n: int) -> None:
    done = Counter(e.key for e in entries(results) if e.state == TrialState.COMPLETE)
    assert len(done) == n and set(done.values()) == {1}, done
    df = runs(results)
    trials = df[df["tags.senet.role"] == "trial"]
    assert not (df["status"] == "RUNNING").any(), df[["status", "tags.senet.label"]]
    finished = Counter(trials[trials["status"] == "FINISHED"]["tags.senet.trial_key"])
    assert len(finished) == n and set(finished.values()) == {1}, finished


@pytest.fixture(autouse=True)
def _restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip


def wait_for(predicate, timeout=120.0, every=0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_sweep_tracks_everything_and_a_rerun_trains_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}])
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 done, 0 running, 0 failed, 0 pending" in out and "no SE" in out
    assert_each_trial_complete_once(results, 6)

    df = runs(results)
    parent = df[df["tags.senet.role"] == "parent"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    trials = df[df["tags.senet.role"] == "trial"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    for tag in ("study", "config_hash", "seed", "git_sha", "git_dirty", "torch", "device", "trial_key"):
        assert trials[f"tags.senet.{tag}"].notna().all(), tag
    assert set(trials["tags.factor.se.excitation"].dropna()) == {'"sigmoid"', '"tanh"'}
    for metric in ("final_val_top1_err", "final_val_top5_err", "test_top1_err", "test_top5_err", "best_val_top1_err",
                   "best_val_epoch", "params", "gflops", "train_time_s", "images_per_s", "peak_mem_mb"):  # fmt: skip
        assert trials[f"metrics.{metric}"].notna().all(), metric
    assert trials["params.se.excitation"].notna().all() and trials["params.model.name"].eq('"resnet20"').all()
    c = client(results)
    run_id = trials["run_id"].iloc[0]
    assert [m.step for m in c.get_metric_history(run_id, "val_top1_err")] == [1, 2]
    assert {"config.yaml", "model_summary.txt"} <= {a.path for a in c.list_artifacts(run_id)}
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()

    # The same command again: everything is COMPLETE, nothing trains, nothing is duplicated.
    assert main(["sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress"]) == 0
    assert len(runs(results)) == len(df)
    assert_each_trial_complete_once(results, 6)
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "6 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out


def test_kill_9_of_a_worker_mid_trial_then_the_trial_resumes_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    ckpt = wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    running = wait_for(lambda: [e for e in entries(results) if e.state == TrialState.RUNNING and "run_id" in e.attrs])
    os.kill(int(running[0].attrs["owner"]["pid"]), signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert_each_trial_complete_once(results, 1)
    df = runs(results)
    trials = df[df["tags.senet.role"] == "trial"]
    assert sorted(trials["status"]) == ["FINISHED", "KILLED"]
    log = (ckpt.parent / "worker.log").read_text()
    assert "resumed after epoch" in log
    killed = [e for e in entries(results) if e.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].attrs["kind"] == "killed"


def test_kill_9_of_the_controller_then_rerun_completes_everything_once(tmp_path):
    spec = write_spec(tmp_path, train={"epochs": 3}, data={"synthetic_train": 480})
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = cli("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "4 done" in out
    assert_each_trial_complete_once(results, 4)


def test_sigint_marks_live_runs_killed_and_the_rerun_resumes(tmp_path):
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping" in err
    assert not any(e.state == TrialState.RUNNING for e in entries(results))
    df = runs(results)
    assert set(df[df["tags.senet.role"] == "trial"]["status"]) == {"KILLED"}
    rerun = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    assert rerun.wait(timeout=180) == 0
    assert_each_trial_complete_once(results, 1)
    assert "resumed after epoch" in next(results.glob("runs/*/worker.log")).read_text()


def test_a_diverged_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"train.lr": [0.05, 1e30]}, seeds=1)
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    assert_each_trial_complete_once(results, 2)
    df = runs(results)
    trials = df[df["tags.senet.role"] == "trial"]
    by_lr = {
        json.loads(f): o for f, o in zip(trials["tags.factor.train.lr"], trials["tags.senet.outcome"], strict=True)
    }
    assert by_lr == {0.05: "finished", 1e30: "diverged"}
    diverged = trials[trials["tags.senet.outcome"] == "diverged"]
    assert diverged["metrics.diverged_epoch"].iloc[0] == 1
    capsys.readouterr()
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "diverged" in capsys.readouterr().out


def test_two_sweeps_and_a_joining_worker_never_run_a_trial_twice(tmp_path):
    spec = write_spec(tmp_path, seeds=3)
    results = tmp_path / "results"
    first = cli("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    wait_for(lambda: (results / "ledger.journal").exists() and entries(results))
    joiner = cli("worker", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    second = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    for p in (first, joiner, second):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert_each_trial_complete_once(results, 6)


def test_errors_are_retried_then_failed_with_the_traceback(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"data.dataset": ["fashion_mnist"]}, seeds=1,
                      data={"root": str(tmp_path / "no-data"), "val_size": 10})  # fmt: skip
    results = tmp_path / "results"
    code = main(["sweep", str(spec), "--results", str(results), "--max-retries", "1", "--no-progress"])
    assert code == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "no-data" in out
    fails = [e for e in entries(results) if e.state == TrialState.FAIL]
    assert len(fails) == 2 and {e.attrs["kind"] for e in fails} == {"data"}
    df = runs(results)
    assert set(df[df["tags.senet.role"] == "trial"]["status"]) == {"FAILED"}
    failed = df[df["tags.senet.role"] == "trial"]["run_id"]
    assert all("traceback.txt" in {a.path for a in client(results).list_artifacts(r)} for r in failed)
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "failed" in capsys.readouterr().out


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    spec = write_spec(tmp_path, grid={"data.dataset": ["fashion_mnist"]}, seeds=3,
                      data={"root": str(tmp_path / "no-data"), "val_size": 10})  # fmt: skip
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--fail-fast", "--no-progress"]) == 1
    assert len([e for e in entries(results) if e.state == TrialState.FAIL]) == 1


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nbase: {se: {squeeze: mean}}\ngrid: {se.reduction: [4]}\nseeds: 1\n")
    assert main(["sweep", str(bad), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "se.squeeze" in err and "allowed" in err and err.count("\n") == 1
    assert main(["sweep", "demo", "--results", str(results), "--set", "se.excitation=tanh"]) == 2
    assert "se.excitation" in capsys.readouterr().err
    spec = write_spec(tmp_path)
    assert main(["sweep", str(spec), "--results", str(results), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "--tracking-uri: cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--results", str(results), "--workers", "0"]) == 2
    assert not results.exists()


def test_dry_run_prints_trials_and_cost(tmp_path, capsys):
    spec = write_spec(tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}])
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials" in out and "gflops" in out and "no SE" in out
    assert not (tmp_path / "r").exists()


def test_real_fashion_mnist_subsets_end_to_end(tmp_path, capsys):
    from ablations.data import DEBIAN_FASHION

    if not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    spec = write_spec(
        tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1,
        extra=[{"label": "no SE", "set": {"se.enabled": False}}],
        data={"dataset": "fashion_mnist", "val_size": 5000, "train_subset": 256, "val_subset": 128, "test_subset": 256},
        train={"epochs": 1, "batch_size": 64},
    )  # fmt: skip
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    assert_each_trial_complete_once(results, 2)
    trials = runs(results).query("`tags.senet.role` == 'trial'")
    assert set(trials["params.data.dataset"]) == {'"fashion_mnist"'}
    assert (trials["metrics.test_top1_err"] < 90).all()  # better than chance on 10 classes after 1 epoch
    assert "no SE" in capsys.readouterr().out


def test_ui_binds_to_loopback_by_default(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    assert main(["ui", "--results", str(tmp_path), "--port", "5123"]) == 0
    cmd = seen["cmd"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert f"sqlite:///{tmp_path.resolve()}/mlflow.db" in cmd
    assert "http://127.0.0.1:5123" in capsys.readouterr().out


def test_gpu_slots_pack_trials_per_device(tmp_path):
    from ablations.runner import Sweep, SweepOptions
    from ablations.spec import expand, load_spec

    spec = load_spec(write_spec(tmp_path))
    sweep = Sweep(spec, expand(spec), SweepOptions(results=tmp_path, gpus=["0", "1"], trials_per_gpu=3, workers=9))
    assert sweep._slots() == ["0", "0", "0", "1", "1", "1"]
    assert Sweep(spec, [], SweepOptions(results=tmp_path, workers=2))._slots() == [None, None]
