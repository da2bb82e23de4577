"""The sweep end to end: ledger, MLflow structure, warm workers, resume after kills, failure classes, bad input.

Workers are real processes training tiny models on synthetic data; the controller runs in-process or, for the
kill tests, as its own process.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ablations.cli import main
from ablations.mlflow_names import LOGGED, runs_link
from ablations.params import read_param
from ablations.sweep.ledger import Ledger, pid_alive
from ablations.sweep.slots import live_workers
from tests._support.configs import write_spec
from tests._support.datasets import write_damaged_fashion
from tests._support.processes import ENV, cli, free_port, port_open, wait_for
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger, tracker

pytestmark = pytest.mark.slow


def sweep(spec: Path, results: Path, *args: str) -> int:
    return main(["sweep", str(spec), "--results", str(results), "--no-progress", *args])


def test_sweep_tracks_everything_and_a_rerun_trains_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}])
    results = tmp_path / "results"
    assert sweep(spec, results, "--workers", "2") == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err.splitlines()
    assert "6 done, 0 running, 0 failed, 0 pending" in out and "no SE" in out
    # Piped (no terminal): a banner, a line per finished trial with its errors and time, the counts, what comes next.
    assert err[0] == "sweep tiny: 6 trials (0 done, 0 failed, 6 to train) on 2 CPU workers"
    assert err[1].startswith(f"  results {results} · MLflow sqlite:///") and err[1].endswith(
        f"ledger {results / 'ledger.db'}"
    )
    ended = [line for line in err if "] done     " in line]
    assert len(ended) == 6 and ended[-1].startswith("[6/6] done ") and "test top-1 err" in ended[-1]
    assert err[-2].startswith("sweep tiny: 6 done after ")
    assert err[-1].startswith("next: senet-ablate status tiny --results ")
    for log in results.glob("runs/*/train.log"):  # every trial's log: its start, its epochs, its test errors
        lines = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
        assert lines[0].startswith("start: resnet20 on synthetic, 2 epochs on cpu, ")
        assert lines[1].startswith("epoch 1/2: train loss ") and lines[2].startswith("epoch 2/2: ")
        assert lines[3].startswith("end: test top-1 err ")
        assert not (log.parent / "progress.json").exists()
    assert_each_trial_complete_once(local_ledger(results), results, 6)

    df = tracker(results).runs_frame()
    parent = df[df["tags.senet.role"] == "parent"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert parent["tags.senet.host_device"].iloc[0] == "cpu"
    assert Ledger.open(local_ledger(results)).note("tiny")["device"] == "cpu"  # the device `auto` resolved to
    trials = df[df["tags.senet.role"] == "trial"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    for tag in (
        "study",
        "config_hash",
        "seed",
        "git_sha",
        "git_dirty",
        "torch",
        "device",
        "trial_key",
        "attempt_id",
        "threads",
        "host_cores",
    ):
        assert trials[f"tags.senet.{tag}"].notna().all(), tag
    assert set(trials["tags.factor.se.excitation"].dropna()) == {"sigmoid", "tanh"}  # plain: they filter as typed
    for metric in ("final_val_top1_err", "final_val_top5_err", "test_top1_err", "test_top5_err", "best_val_top1_err",
                   "best_val_epoch", "params", "gflops", "train_time_s", "images_per_s", "peak_mem_mb"):  # fmt: skip
        assert trials[f"metrics.{LOGGED[metric]}"].notna().all(), metric  # grouped: val/..., test/..., cost/...
    assert trials["params.train.device"].eq("cpu").all() and trials["params.train.precision"].eq("fp32").all()
    c = tracker(results).client
    run_id = trials["run_id"].iloc[0]
    assert [m.step for m in c.get_metric_history(run_id, "val/top1_err")] == [1, 2]
    assert {"config.yaml", "model_summary.txt", "start.json"} <= {a.path for a in c.list_artifacts(run_id)}
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()
    # Warm workers: two processes trained six trials (each claims until nothing is left).
    logs = list(results.glob("workers/*/slot*.log"))
    assert len(logs) == 2 and sum(log.read_text().count("attempt 1") for log in logs) == 6

    # The same command again: everything is COMPLETE, nothing trains, nothing is duplicated.
    assert sweep(spec, results, "--workers", "2") == 0
    assert len(tracker(results).runs_frame()) == len(df)
    assert_each_trial_complete_once(local_ledger(results), results, 6)
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "6 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_fresh_process_per_trial_is_an_option(tmp_path):
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    assert sweep(spec, results, "--fresh-process") == 0
    assert_each_trial_complete_once(local_ledger(results), results, 2)
    log = next(results.glob("workers/*/slot0.log")).read_text()
    assert log.count("recycled after 1 trials") == 2


def test_kill_9_of_a_worker_mid_trial_then_the_trial_resumes_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    ckpt = wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    running = wait_for(
        lambda: [a for a in attempts(local_ledger(results)) if a.state == TrialState.RUNNING and a.run_id]
    )
    os.kill(running[0].owner.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 1)
    runs = tracker(results).trial_runs()
    assert sorted(r.status for r in runs) == ["FAILED", "FINISHED"]
    assert "died mid-trial" in next(r for r in runs if r.status == "FAILED").tags["senet.ended_by"]
    assert "resumed after epoch" in (ckpt.parent / "train.log").read_text()
    crashed = [a for a in attempts(local_ledger(results)) if a.state == TrialState.FAIL]
    assert len(crashed) == 1 and crashed[0].kind == "crash"


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_workers_outlive_a_killed_controller_and_a_rerun_adopts_them(tmp_path, capsys):
    """Item 2: kill -9 (or a dropped SSH session) of the controller leaves its workers running; they finish and
    record their trials (no broken pipe), and a rerun adopts the live ones instead of starting duplicates."""
    spec = write_spec(tmp_path, train={"epochs": 4}, data={"synthetic_train": 640})
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", "--max-retries", "0",
               cwd=tmp_path)  # fmt: skip
    workers = wait_for(lambda: len(w := [x for x in _workers(results)]) == 2 and w)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert all(pid_alive(w.pid, w.start) for w in workers)  # orphaned, alive, still training
    assert sweep(spec, results, "--workers", "2", "--max-retries", "0") == 0  # the rerun, in this process
    assert "4 done" in capsys.readouterr().out
    assert_each_trial_complete_once(local_ledger(results), results, 4)
    ledger = attempts(local_ledger(results))
    assert not [a for a in ledger if a.state == TrialState.FAIL]  # nothing failed: no broken pipe, no duplicate
    # The rerun adopted the two live workers instead of starting more: they trained every trial.
    assert {a.owner.pid for a in ledger if a.owner is not None} == {w.pid for w in workers}
    assert "Traceback" not in "".join(log.read_text() for log in results.glob("workers/*/slot*.log"))


def _workers(results: Path):
    folders = list(results.glob("workers/*"))
    return live_workers(results, folders[0].name) if folders else []


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_sigint_stops_the_workers_cleanly_and_the_rerun_resumes(tmp_path):
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", "--max-retries", "0", cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "stopping" in err
    ledger = attempts(local_ledger(results))
    assert [(a.state, a.kind) for a in ledger] == [(TrialState.FAIL, "stopped")]  # stopped by us: no retry used
    assert {r.status for r in tracker(results).trial_runs()} == {"KILLED"}
    assert not _workers(results)
    assert sweep(spec, results, "--max-retries", "0") == 0  # the rerun, in this process
    assert_each_trial_complete_once(local_ledger(results), results, 1)
    # the stop came mid-epoch: the worker checkpointed at its next step, and the rerun went on from that step
    assert "resumed in epoch" in next(results.glob("runs/*/train.log")).read_text()
    assert "paused at epoch" in ledger[0].reason


def test_a_diverged_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"train.lr": [0.05, 1e30]}, seeds=1)
    results = tmp_path / "results"
    assert sweep(spec, results) == 0
    assert_each_trial_complete_once(local_ledger(results), results, 2)
    runs = tracker(results).trial_runs()
    by_lr = {read_param(r.tags["factor.train.lr"]): r.outcome for r in runs}
    assert by_lr == {0.05: "finished", 1e30: "diverged"}
    assert next(r for r in runs if r.outcome == "diverged").metrics["diverged_epoch"] == 1
    capsys.readouterr()
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "diverged" in capsys.readouterr().out


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_two_sweeps_and_a_joining_worker_never_run_a_trial_twice(tmp_path):
    spec = write_spec(tmp_path, seeds=3)
    results = tmp_path / "results"
    first = cli("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    wait_for(lambda: attempts(local_ledger(results)))
    joiner = cli("worker", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    second = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path)
    for p in (first, joiner, second):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert_each_trial_complete_once(local_ledger(results), results, 6)


def test_a_configuration_error_is_one_attempt_one_line_and_exit_1(tmp_path, capsys):
    """Unreadable data is a configuration error: not retried whatever --max-retries says; the others still run.
    (Missing data never gets this far: the trial key needs the files, so the sweep refuses it before writing.)"""
    spec = write_spec(tmp_path, grid={"data.dataset": ["fashion_mnist", "synthetic"]}, seeds=1,
                      data={"root": str(write_damaged_fashion(tmp_path / "damaged")), "val_size": 10})  # fmt: skip
    results = tmp_path / "results"
    assert sweep(spec, results, "--max-retries", "3") == 1
    out = capsys.readouterr().out
    assert "1 done, 0 running, 1 failed" in out and "damaged" in out
    fails = [a for a in attempts(local_ledger(results)) if a.state == TrialState.FAIL]
    assert len(fails) == 1 and fails[0].kind == "config"
    failed = [r for r in tracker(results).trial_runs() if r.status == "FAILED"]
    assert len(failed) == 1 and failed[0].tags["senet.ended_by"].startswith("config:")
    assert "traceback.txt" in {a.path for a in tracker(results).client.list_artifacts(failed[0].run_id)}
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert "failed" in capsys.readouterr().out


def test_a_deterministic_crash_uses_the_retries_then_fails(tmp_path, capsys, monkeypatch):
    """Item 9: a crash (here a worker that dies at every start of training) counts toward --max-retries, so the
    sweep ends instead of looping."""
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1)
    results = tmp_path / "results"
    monkeypatch.setenv("SENET_ABLATE_FAILPOINT", "before_training")  # the workers inherit it
    assert sweep(spec, results, "--max-retries", "1") == 1
    assert "1 failed" in capsys.readouterr().out
    kinds = [(a.state, a.kind) for a in attempts(local_ledger(results))]
    assert kinds == [(TrialState.FAIL, "crash")] * 2


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    spec = write_spec(tmp_path, grid={"data.dataset": ["fashion_mnist"]}, seeds=3,
                      data={"root": str(write_damaged_fashion(tmp_path / "damaged")), "val_size": 10})  # fmt: skip
    results = tmp_path / "results"
    assert sweep(spec, results, "--fail-fast") == 1
    assert len([a for a in attempts(local_ledger(results)) if a.state == TrialState.FAIL]) == 1


def test_cuda_asked_for_on_a_host_without_cuda_is_exit_2_at_once(tmp_path, capsys):
    """Item 1: a spec with train.device: cuda used to loop forever; now one line, exit 2, nothing written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; the refusal is for hosts without it")
    spec = write_spec(tmp_path, train={"device": "cuda"})
    results = tmp_path / "results"
    began = time.monotonic()
    assert sweep(spec, results, "--max-retries", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.device: 'cuda' requested" in err and "no CUDA device" in err
    assert time.monotonic() - began < 30 and not results.exists()


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nbase: {se: {squeeze: mean}}\ngrid: {se.reduction: [4]}\nseeds: 1\n")
    spec = write_spec(tmp_path)
    cases = [
        ([str(bad)], "se.squeeze"),
        (["demo", "--set", "se.excitation=tanh"], "se.excitation"),
        ([str(spec), "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri: cannot reach http://127.0.0.1:9"),
        ([str(spec), "--workers", "0"], "--workers: 0 is not allowed"),
        ([str(spec), "--trials-per-gpu", "0"], "--trials-per-gpu: 0 is not allowed"),  # item 15: it used to spin
        ([str(spec), "--trials-per-gpu", "lots"], "--trials-per-gpu: 'lots' is not allowed"),
        ([str(spec), "--gpus", "0;1"], "--gpus: '0;1' is not allowed"),
        ([str(spec), "--max-retries", "-1"], "--max-retries"),
        ([str(spec), "--storage", "postgresql:/u:pw@db/x"], "looks like a URL without '://'"),  # item 16
        ([str(spec), "--tracking-uri", "postgres//u:pw@db/x"], "looks like a URL without '://'"),
        ([str(spec), "--storage", "ftp://db/x"], "--storage: ftp://db/x has an unknown scheme"),
    ]
    for args, needle in cases:
        assert main(["sweep", *args, "--results", str(results)]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "pw@" not in err, (args, err)
    for command in ("ui", "server"):  # HTTP worker counts of the MLflow server we start
        assert main([command, "--http-workers", "0", "--results", str(results)]) == 2
        assert (
            capsys.readouterr().err
            == "senet-ablate: error: --http-workers: 0 is not allowed; allowed: an integer in 1..64\n"
        )
    assert not results.exists()
    assert not list(tmp_path.glob("postgres*")) and not list(tmp_path.glob("**/*pw*"))


def test_bad_input_missing_data_is_refused_before_anything_is_written(tmp_path, capsys):
    """Item 7 (issue 19): a trial key holds the digest of its dataset's files, so missing data is refused at once by
    the sweep and its --dry-run alike, with the readers' one line, exit 2 and nothing written (the sweep used to
    write its ledger and fail each trial in a worker). data.download=false refuses too; true would download first."""
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = write_spec(tmp_path, data={"dataset": "fashion_mnist", "root": str(empty), "val_size": 10})
    results = tmp_path / "results"
    fashion = f"data.root: Fashion-MNIST not found in {empty}, {empty / 'FashionMNIST' / 'raw'}; run `apt-get install"
    cifar = f"data.root: cifar10 not found at {empty / 'cifar-10-batches-py'}; set data.download=true"
    cases = [
        ([], fashion),
        (["--dry-run"], fashion),
        (["--set", "data.download=false"], fashion),
        (["--set", "data.dataset=cifar10", "--dry-run"], cifar),
        (["--set", "data.dataset=cifar10"], cifar),
    ]
    for args, needle in cases:
        assert main(["sweep", str(spec), "--results", str(results), "--no-progress", *args]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and "--set data.root=DIR" in err and err.count("\n") == 1, (args, err)
    assert not results.exists() and not list(empty.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "tiny.yaml"]


def test_huge_seed_counts_and_non_utf8_specs_are_one_line(tmp_path, capsys):
    """Items 5 and 15: `seeds: 1000000000` was a MemoryError traceback, a binary spec a UnicodeDecodeError."""
    huge = write_spec(tmp_path, name="huge", seeds=1_000_000_000)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00\x01 binary garbage")
    for path, needle in ((huge, "seeds: 1000000000 is not allowed"), (binary, "not UTF-8 text")):
        assert main(["sweep", str(path), "--results", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_trials_and_cost(tmp_path, capsys):
    spec = write_spec(tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}])
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials" in out and "gflops" in out and "no SE" in out
    assert not (tmp_path / "r").exists()


def test_real_fashion_mnist_subsets_end_to_end(tmp_path, capsys):
    from ablations.datafiles import DEBIAN_FASHION

    if not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed (make test installs it)")
    spec = write_spec(
        tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1,
        extra=[{"label": "no SE", "set": {"se.enabled": False}}],
        data={"dataset": "fashion_mnist", "val_size": 5000, "train_subset": 256, "val_subset": 128, "test_subset": 256},
        train={"epochs": 1, "batch_size": 64},
    )  # fmt: skip
    results = tmp_path / "results"
    assert sweep(spec, results) == 0
    assert_each_trial_complete_once(local_ledger(results), results, 2)
    runs = tracker(results).trial_runs()
    assert all(r.metrics["test_top1_err"] < 90 for r in runs)  # better than chance on 10 classes after 1 epoch
    assert "no SE" in capsys.readouterr().out


@pytest.mark.e2e
def test_ui_binds_to_loopback_links_the_runs_tables_and_dies_with_sigterm(tmp_path):
    """Item 6: `ui` stopped with SIGTERM used to leave the MLflow server running and the port taken."""
    results = tmp_path / "results"
    tracker(results).make_parent("tiny", "a study with one run so far", {})  # what a first sweep leaves
    exp = tracker(results).experiment("tiny")
    port = free_port()
    cmd = [sys.executable, "-m", "ablations.cli", "ui", "--results", str(results), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: port_open(port), timeout=90, every=0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as page:
            assert page.status == 200
        listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"tiny: {runs_link(f'http://127.0.0.1:{port}', exp)}" in out
    wait_for(lambda: not port_open(port), timeout=30)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmd(p).count(f"--port\0{port}")]


def _cmd(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_gpu_slots_pack_trials_per_device(tmp_path):
    from ablations.sweep.start import SweepOptions

    opts = SweepOptions(results=tmp_path, gpus=["0", "1"], trials_per_gpu=3, workers=9)
    assert [s.gpu for s in opts.slots()] == ["0", "0", "0", "1", "1", "1"]
    assert len({s.index for s in opts.slots()}) == 6
    assert [s.gpu for s in SweepOptions(results=tmp_path, workers=2).slots()] == [None, None]


def test_a_trial_left_queued_by_another_study_does_not_block_this_one(tmp_path):
    """Item 10: a trial shared by two studies and left WAITING in one study's queue used to block the other."""
    from ablations.study.load import load_spec
    from ablations.study.trials import expand
    from ablations.sweep.ledger import Ledger
    from ablations.sweep.reconcile import Reconciler
    from ablations.sweep.status import ticket_of

    results = tmp_path / "results"
    first = write_spec(tmp_path, name="first", grid={"se.excitation": ["sigmoid", "tanh"]}, seeds=1)
    second = write_spec(tmp_path, name="second", grid={"se.excitation": ["sigmoid", "relu"]}, seeds=1)
    # The first study's sweep queued its trials and died before training any.
    tickets = {t.key: ticket_of(t) for t in expand(load_spec(first))}
    Reconciler(Ledger.open(local_ledger(results)), print).reconcile(tickets, max_retries=1)
    assert sweep(second, results) == 0
    ledger = attempts(local_ledger(results))
    shared = next(t.key for t in expand(load_spec(second)) if t.label == "se.excitation=sigmoid")
    assert [a.state for a in ledger if a.key == shared] == [TrialState.COMPLETE]  # trained once, by `second`
    tanh = next(t.key for t in expand(load_spec(first)) if t.label == "se.excitation=tanh")
    assert [a.state for a in ledger if a.key == tanh] == [TrialState.WAITING]  # not ours: left for `first`


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_workers_train_only_their_own_sweep_and_a_joiner_needs_the_sweeps_settings(tmp_path, capsys):
    """Item 11: a joining worker without the controller's --set, or a second spec file of the same name, trained
    configurations that were not in the spec the user ran. A joiner without --set now joins the sweep as it was
    run (the ledger recorded its --set, issue 19); one with other settings is refused."""
    results = tmp_path / "results"
    spec = write_spec(tmp_path, name="same", seeds=1)
    other = tmp_path / "elsewhere"
    other.mkdir()
    namesake = write_spec(other, name="same", grid={"train.lr": [0.2]}, seeds=1)  # same name, another trial
    assert sweep(spec, results, "--set", "train.epochs=1") == 0
    keys = {a.key for a in attempts(local_ledger(results))}
    assert main(["worker", str(spec), "--results", str(results), "--no-progress"]) == 0  # the recorded --set
    assert main(["worker", str(spec), "--results", str(results), "--no-progress", "--set", "train.epochs=3"]) == 2
    assert "give `worker` the sweep's own --set" in capsys.readouterr().err
    assert {a.key for a in attempts(local_ledger(results))} == keys  # neither queued nor trained anything
    assert sweep(namesake, results) == 0
    assert len({a.key for a in attempts(local_ledger(results))} - keys) == 1  # the namesake's own trial, nothing else
    assert_each_trial_complete_once(local_ledger(results), results, 3)


def test_secrets_and_store_urls_never_reach_a_command_line(tmp_path, monkeypatch):
    """Item 16: MLFLOW_TRACKING_URI from the environment was copied onto worker command lines (visible in ps)."""
    results = tmp_path / "results"
    uri = f"sqlite:///{(results / 'mlflow.db').resolve()}"
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    proc = cli("sweep", str(spec), "--results", str(results), "--no-progress", cwd=tmp_path,
               env={"MLFLOW_TRACKING_URI": uri, "SENET_ABLATE_STORAGE": local_ledger(results)})  # fmt: skip
    workers = wait_for(lambda: _workers(results))
    cmdlines = [Path(f"/proc/{w.pid}/cmdline").read_bytes() for w in workers]
    assert proc.wait(timeout=180) == 0
    assert cmdlines and not [c for c in cmdlines if b"sqlite" in c or b"ledger.journal" in c]


def test_workers_never_outnumber_the_trials_still_to_train(tmp_path):
    """Item 16: `--workers 4` started four workers (four processes importing torch and MLflow) for two trials."""
    spec = write_spec(tmp_path, seeds=1)  # two trials
    results = tmp_path / "results"
    assert sweep(spec, results, "--workers", "4") == 0
    assert len(list(results.glob("workers/*/slot*.log"))) == 2
    assert_each_trial_complete_once(local_ledger(results), results, 2)


@pytest.mark.e2e  # a long sweep in subprocesses: `make e2e` (make test's 10 minutes)
def test_a_joiner_keeps_to_its_own_manifest_and_its_ctrl_c_to_its_own_workers(tmp_path):
    """Item 16: a `worker` joining on the same host rewrote the sweep's manifest (the same id) with its own settings,
    and its Ctrl-C stopped the sweep's workers too (they were registered under that id)."""
    spec = write_spec(tmp_path, seeds=1, train={"epochs": 20})  # two trials, long enough to stop one mid-way
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress", "--max-retries", "0"]
    first = cli("sweep", str(spec), *common, cwd=tmp_path)
    [theirs] = wait_for(lambda: _running(results))  # the sweep's one worker trains a trial
    [manifest] = list(results.glob("sweeps/*.json"))
    written = manifest.read_bytes()
    joiner = cli("worker", str(spec), *common, cwd=tmp_path)
    [mine] = wait_for(lambda: [a for a in _running(results) if a.owner.pid != theirs.owner.pid])
    assert manifest.read_bytes() == written  # the sweep's manifest as the sweep wrote it
    joiner.send_signal(signal.SIGINT)
    _, err = joiner.communicate(timeout=120)
    assert joiner.returncode == 130, err
    assert pid_alive(theirs.owner.pid, theirs.owner.start)  # the sweep's worker trains on
    stopped = [a for a in attempts(local_ledger(results)) if a.kind == "stopped"]
    assert [a.owner.pid for a in stopped] == [mine.owner.pid]  # only the joiner's own worker was stopped
    first.send_signal(signal.SIGINT)  # and the sweep's Ctrl-C stops its own
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert not pid_alive(theirs.owner.pid, theirs.owner.start) and not _running(results)


def _running(results: Path):
    return [a for a in attempts(local_ledger(results)) if a.state == TrialState.RUNNING and a.owner is not None]
