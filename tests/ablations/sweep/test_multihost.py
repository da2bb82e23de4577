"""Many hosts on PostgreSQL: an Optuna RDB ledger with heartbeats and an MLflow tracking server on PostgreSQL.

A second host is simulated honestly: its processes report another host name (SENET_ABLATE_HOST), so the
controller cannot see their pids and must rely on the database heartbeat, exactly as across machines.
"""

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablations.sweep.ledger import Ledger, open_storage
from tests.ablations.postgres import start_postgres
from tests.ablations.test_runner import ENV, wait_for, write_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FAST_BEAT = {"SENET_ABLATE_HEARTBEAT_S": "1"}  # stale after 4 s instead of 2 minutes


@pytest.fixture(scope="module")
def pg():
    server, why = start_postgres()
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(pg, tmp_path_factory):
    """`senet-ablate server` on a PostgreSQL backend store, bound to 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = pg.createdb("mlflow")
    art = tmp_path_factory.mktemp("artifacts")
    env = {**ENV, "MLFLOW_BACKEND_STORE_URI": backend, "PYTHONPATH": str(ROOT)}
    with open(art / "server.log", "w") as log:  # a pipe nobody reads would fill up and block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "ablations.cli", "server", "--port", str(port), "--artifacts-destination",
             str(art)], env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"

        def up():
            try:
                MlflowClient(uri).search_experiments(max_results=1)
                return True
            except Exception:
                return False

        wait_for(up, timeout=120, every=1)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert pg.password.encode() not in cmdline  # the database password is not on the command line
        yield uri
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def run(*args, env=None, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**ENV, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def ledger(url):
    return Ledger(open_storage(url))


def check_once(url, uri, study, n):
    done = Counter(e.key for e in ledger(url).entries(study) if e.state == TrialState.COMPLETE)
    assert len(done) == n and set(done.values()) == {1}, done
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"senet-ablate/{study}")
    runs = client.search_runs([exp.experiment_id], "tags.`senet.role` = 'trial'")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = Counter(r.data.tags["senet.trial_key"] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == n and set(finished.values()) == {1}, finished
    return runs


def test_three_workers_on_postgres_run_every_trial_once(pg, mlflow_server, tmp_path):
    url = pg.createdb("three")
    spec = write_spec(tmp_path, name="three", seeds=3)
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(tmp_path / "results"),
              "--no-progress"]  # fmt: skip
    controller = run("sweep", str(spec), *common, cwd=tmp_path)
    wait_for(lambda: ledger(url).entries("three"), timeout=120)
    joiners = [run("worker", str(spec), *common, env={"SENET_ABLATE_HOST": f"host{i}"}, cwd=tmp_path) for i in (1, 2)]
    for p in (controller, *joiners):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    runs = check_once(url, mlflow_server, "three", 6)
    hosts = Counter(e.attrs.get("owner", {}).get("host") for e in ledger(url).entries("three"))
    assert sum(hosts.values()) == 6
    assert all(pg.password not in str(r.data.params) + str(r.data.tags) for r in runs)


def test_a_dead_host_is_noticed_by_heartbeat_and_its_trial_resumed_elsewhere(pg, mlflow_server, tmp_path):
    url = pg.createdb("dead")
    spec = write_spec(tmp_path, name="dead", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(results), "--no-progress"]
    host_b = run("sweep", str(spec), *common, env={"SENET_ABLATE_HOST": "hostB", **FAST_BEAT}, cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None), timeout=180)
    entry = wait_for(lambda: [e for e in ledger(url).entries("dead") if e.state == TrialState.RUNNING
                              and "run_id" in e.attrs], timeout=60)[0]  # fmt: skip
    # Host B dies: its controller and its worker vanish without a word.
    os.kill(host_b.pid, signal.SIGKILL)
    os.kill(int(entry.attrs["owner"]["pid"]), signal.SIGKILL)
    host_b.wait()
    survivor = run("worker", str(spec), *common, env={"SENET_ABLATE_HOST": "hostA", **FAST_BEAT}, cwd=tmp_path)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    runs = check_once(url, mlflow_server, "dead", 1)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    log = next(results.glob("runs/*/worker.log")).read_text()
    assert "resumed after epoch" in log
    hosts = [e.attrs.get("owner", {}).get("host") for e in ledger(url).entries("dead")]
    assert hosts == ["hostB", "hostA"]


def test_postgres_restarted_during_a_sweep(pg, mlflow_server, tmp_path):
    url = pg.createdb("restart")
    spec = write_spec(tmp_path, name="restart", train={"epochs": 3}, data={"synthetic_train": 480})
    results = tmp_path / "results"
    common = ["--storage", url, "--tracking-uri", mlflow_server, "--results", str(results), "--no-progress"]
    proc = run("sweep", str(spec), *common, "--workers", "2", cwd=tmp_path)
    wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None), timeout=180)
    pg.restart()
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:  # allowed: a clear stop, then a clean resume
        assert "rerun the same command to resume" in err or "unreachable" in err, err
        again = run("sweep", str(spec), *common, cwd=tmp_path)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
    check_once(url, mlflow_server, "restart", 4)


def test_unreachable_tracking_server_exits_2_before_training(pg, tmp_path):
    url = pg.createdb("nots")
    spec = write_spec(tmp_path, name="nots")
    proc = run("sweep", str(spec), "--storage", url, "--tracking-uri", "http://127.0.0.1:9", "--results",
               str(tmp_path / "results"), cwd=tmp_path)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["senet-ablate: error: --tracking-uri: cannot reach http://127.0.0.1:9 "
                                        "(Connection refused)"]  # fmt: skip
    assert ledger(url).entries() == [] and not (tmp_path / "results").exists()


def test_bad_storage_url_is_one_line_without_the_password(tmp_path):
    spec = write_spec(tmp_path, name="badurl")
    proc = run("sweep", str(spec), "--storage", "postgresql+psycopg2://u:s3cret@127.0.0.1:9/x", "--results",
               str(tmp_path / "r"), cwd=tmp_path, env={"SENET_ABLATE_DB_RETRY_S": "2"})  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "s3cret" not in err and "--storage" in err and err.count("\n") == 1
