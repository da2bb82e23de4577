"""Many hosts on PostgreSQL: the ledger and an MLflow tracking server on one throwaway cluster.

A second host is simulated honestly: its processes have another host id (SENET_ABLATE_HOST_ID) but the same
hostname, as containers on one machine would, so nobody may judge them by pid: only their heartbeat counts.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablations.cli import main
from ablations.sweep.ledger import Ledger
from tests._support.configs import write_spec
from tests._support.processes import ENV, cli, free_port, port_open, wait_for
from tests._support.stores import attempts

pytestmark = pytest.mark.slow
FAST_BEAT = {"SENET_ABLATE_HEARTBEAT_S": "1"}  # a ledger created with it: stale after 4 s instead of 2 minutes


@pytest.fixture(scope="module")
def mlflow_server(pg, tmp_path_factory):
    """`senet-ablate server` on a PostgreSQL backend store given as a plain postgresql:// URL, on 127.0.0.1."""
    port = free_port()
    backend = pg.createdb("mlflow")
    art = tmp_path_factory.mktemp("artifacts")
    env = {**ENV, "MLFLOW_BACKEND_STORE_URI": backend}
    with open(art / "server.log", "w") as log:  # a pipe nobody reads would fill up and block the server
        cmd = [
            sys.executable,
            "-m",
            "ablations.cli",
            "server",
            "--port",
            str(port),
            "--http-workers",
            "2",
            "--artifacts-destination",
            str(art),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        uri = f"http://127.0.0.1:{port}"

        def up():
            MlflowClient(uri).search_experiments(max_results=1)
            return True

        wait_for(up, timeout=120, every=1)
        assert not [c for c in _cmdlines() if pg.password.encode() in c]  # the password is on no command line
        yield uri
        proc.send_signal(signal.SIGTERM)  # item 6: SIGTERM used to leave the MLflow server running
        proc.wait(timeout=60)
    wait_for(lambda: not port_open(port), timeout=30)


def _cmdlines() -> list[bytes]:
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            out.append((p / "cmdline").read_bytes())
        except OSError:
            continue
    return out


def check_once(url: str, uri: str, n: int):
    """n trials COMPLETE once in the ledger at `url`, each with one FINISHED run, none RUNNING (the tracking
    server is shared by the tests of this module: only this ledger's trials are looked at)."""
    ledger = attempts(url)
    done = Counter(a.key for a in ledger if a.state == TrialState.COMPLETE)
    assert len(done) == n and set(done.values()) == {1}, done
    client = MlflowClient(uri)
    query = "tags.`senet.role` = 'trial'"
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], query)]
    runs = [r for r in runs if r.data.tags["senet.trial_key"] in {a.key for a in ledger}]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = Counter(r.data.tags["senet.trial_key"] for r in runs if r.info.status == "FINISHED")
    assert finished == Counter(set(done)), finished
    return runs


def test_three_workers_on_plain_postgresql_urls_run_every_trial_once(pg, mlflow_server, tmp_path, monkeypatch):
    """Item 4: plain postgresql:// URLs (psycopg 3 under SQLAlchemy 2.1) for the ledger and the MLflow store."""
    url = pg.createdb("three")
    assert url.startswith("postgresql://")
    spec = write_spec(tmp_path, name="three", seeds=3)
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(tmp_path / "results"),
              "--no-progress"]  # fmt: skip
    controller = cli("sweep", str(spec), *common, "--workers", "2", cwd=tmp_path)
    wait_for(lambda: attempts(url), timeout=120)
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-b")  # a second host joins (here, from this process)
    assert main(["worker", str(spec), *common]) == 0
    out, err = controller.communicate(timeout=400)
    assert controller.returncode == 0, err
    check_once(url, mlflow_server, 6)
    [link] = [line for line in err.splitlines() if line.startswith("runs: ")]  # the study's runs, one click away
    assert link.startswith(f"runs: {mlflow_server}/#/experiments/") and "?workflowType=machine_learning" in link


def test_tracking_directly_on_a_plain_postgresql_url(pg, tmp_path):
    url, store = pg.createdb("direct_ledger"), pg.createdb("direct_mlflow")
    spec = write_spec(tmp_path, name="direct", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 1})
    args = ["sweep", str(spec), "--storage", url, "--tracking-uri", store, "--results", str(tmp_path / "r")]
    assert main([*args, "--no-progress"]) == 0
    check_once(url, store.replace("postgresql://", "postgresql+psycopg://"), 1)


@pytest.mark.faults  # a host's death and a database outage: end-to-end faults, in `make faults`
def test_a_dead_host_is_noticed_by_heartbeat_and_its_trial_resumed_elsewhere(pg, mlflow_server, tmp_path, monkeypatch):
    url = pg.createdb("dead")
    spec = write_spec(tmp_path, name="dead", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(results), "--no-progress"]
    host_b = cli("sweep", str(spec), *common, env={"SENET_ABLATE_HOST_ID": "host-b", **FAST_BEAT}, cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None), timeout=180)
    attempt = wait_for(lambda: [a for a in attempts(url) if a.state == TrialState.RUNNING and a.run_id], 60)[0]
    # Host B dies: its controller and its worker vanish without a word.
    host_b.send_signal(signal.SIGKILL)
    os.kill(attempt.owner.pid, signal.SIGKILL)
    host_b.wait()
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-a")  # the surviving host (here, this process)
    assert main(["worker", str(spec), *common]) == 0
    runs = check_once(url, mlflow_server, 1)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert "resumed after epoch" in next(results.glob("runs/*/train.log")).read_text()
    story = [(a.owner.host_id, a.state, a.kind) for a in attempts(url)]
    assert story == [("host-b", TrialState.FAIL, "lost"), ("host-a", TrialState.COMPLETE, None)]


@pytest.mark.faults  # a host's death and a database outage: end-to-end faults, in `make faults`
def test_postgres_restarted_during_a_sweep(pg, mlflow_server, tmp_path):
    url = pg.createdb("restart")
    spec = write_spec(tmp_path, name="restart", train={"epochs": 3}, data={"synthetic_train": 480})
    results = tmp_path / "results"
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(results), "--no-progress"]
    proc = cli("sweep", str(spec), *common, "--workers", "2", cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None), timeout=180)
    pg.restart()
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:  # allowed: a clear stop, then a clean resume
        assert "rerun the same command to resume" in err or "unreachable" in err, err
        again = cli("sweep", str(spec), *common, cwd=tmp_path)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
    check_once(url, mlflow_server, 4)


def test_unreachable_tracking_server_exits_2_before_training(pg, tmp_path):
    url = pg.createdb("nots")
    spec = write_spec(tmp_path, name="nots")
    proc = cli("sweep", str(spec), "--storage", url, "--tracking-uri", "http://127.0.0.1:9", "--results",
               str(tmp_path / "results"), cwd=tmp_path)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["senet-ablate: error: --tracking-uri: cannot reach http://127.0.0.1:9 "
                                        "(Connection refused)"]  # fmt: skip
    assert Ledger.open(url).attempts() == [] and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://u:s3cret@127.0.0.1:9/x", "postgresql+psycopg2://u@127.0.0.1:9/x?password=s3cret"]
)
def test_bad_storage_url_is_one_line_without_the_password(url, tmp_path):
    """Item 3: a password in the URL's query string used to be printed."""
    spec = write_spec(tmp_path, name="badurl")
    started = time.monotonic()
    proc = cli("sweep", str(spec), "--storage", url, "--results", str(tmp_path / "r"), cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "s3cret" not in err and "--storage" in err and err.count("\n") == 1
    # A command starting up waits seconds for its database, not the two minutes a running sweep rides out.
    assert "unreachable for 5 s" in err and time.monotonic() - started < 60
    assert not (tmp_path / "r").exists()
