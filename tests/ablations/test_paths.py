"""The environment variables the harness reads: a bad value is one line naming the variable, exit 2."""

import os
import subprocess
import sys

import pytest

from ablations.errors import SenetError
from ablations.paths import SECONDS_ENV, env_seconds, with_python_path
from tests._support.configs import write_spec
from tests._support.processes import ENV, ROOT

VARIABLE = "SENET_ABLATE_TEST_S"


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf", "1e999", "30s"])
def test_seconds_that_are_not_a_positive_number_are_refused_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv(VARIABLE, text)
    with pytest.raises(SenetError) as err:
        env_seconds(VARIABLE, 5.0)
    assert str(err.value) == f"{VARIABLE}: {text!r} is not allowed; allowed: seconds > 0"


def test_seconds_are_read_at_use_with_their_default_when_unset(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    assert env_seconds(VARIABLE, 5.0) == 5.0
    monkeypatch.setenv(VARIABLE, "")
    assert env_seconds(VARIABLE, 5.0) == 5.0
    monkeypatch.setenv(VARIABLE, " 2.5 ")
    assert env_seconds(VARIABLE, 5.0) == 2.5


def test_every_numeric_variable_is_declared():
    assert set(SECONDS_ENV) == {
        "SENET_ABLATE_HEARTBEAT_S",
        "SENET_ABLATE_DB_RETRY_S",
        "SENET_ABLATE_TRACKING_RETRY_S",
        "SENET_ABLATE_STALL_S",
    }


@pytest.mark.parametrize("name", sorted(SECONDS_ENV))
def test_a_bad_numeric_variable_is_one_line_and_exit_2_not_a_traceback(tmp_path, name):
    """Item 16 (issue 19): these were read with float() at import, so `status` or `sweep` died with a traceback."""
    spec = write_spec(tmp_path)
    results = tmp_path / "results"
    for args in (["status", "demo"], ["sweep", str(spec), "--dry-run"], ["sweep", str(spec), "--no-progress"]):
        proc = subprocess.run([sys.executable, "-m", "ablations.cli", *args, "--results", str(results)], cwd=ROOT,
                              env={**ENV, name: "abc"}, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr == f"senet-ablate: error: {name}: 'abc' is not allowed; allowed: seconds > 0\n", args
    assert not results.exists()


def test_the_tracking_retry_is_read_when_a_runlog_is_made_not_at_import(monkeypatch):
    from ablations.sweep.runlog import RETRY_S, RunLog

    monkeypatch.setenv("SENET_ABLATE_TRACKING_RETRY_S", "7")
    assert RunLog().retry_s == 7.0 and RunLog(retry_s=1).retry_s == 1
    monkeypatch.delenv("SENET_ABLATE_TRACKING_RETRY_S")
    assert RunLog().retry_s == RETRY_S


def test_with_python_path_puts_the_checkout_first_and_keeps_the_hosts_entries(tmp_path):
    """Issue 20, item 1: the harness, the GPU check, its Makefile target and the tests' child processes replaced
    PYTHONPATH, so packages a host installed with `pip install --target DIR` vanished in every child."""
    env = with_python_path({"PYTHONPATH": f"/opt/site{os.pathsep}{tmp_path}", "HOME": "/h"}, tmp_path)
    assert env == {"PYTHONPATH": f"{tmp_path}{os.pathsep}/opt/site", "HOME": "/h"}
    assert with_python_path({}, tmp_path) == {"PYTHONPATH": str(tmp_path)}


def test_every_child_the_project_starts_keeps_the_hosts_python_path(tmp_path):
    from benchmarks.harness import child_env
    from tests._support.processes import ROOT

    host = {**os.environ, "PYTHONPATH": "/opt/site"}
    assert child_env(host)["PYTHONPATH"] == f"{ROOT}{os.pathsep}/opt/site"
    shown = "import os, sys; from tests._support.processes import ENV; print(ENV['PYTHONPATH'])"
    out = subprocess.run([sys.executable, "-c", shown], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**host, "PYTHONPATH": f"{ROOT}{os.pathsep}/opt/site"})  # fmt: skip
    assert out.stdout.strip() == f"{ROOT}{os.pathsep}/opt/site"
    probe = "GPU_PY=python3 -c 'import os; print(os.environ[\"PYTHONPATH\"])'"  # the GPU check's own command line
    out = subprocess.run(["make", "-s", "gpu-check", probe], cwd=ROOT, env=host, capture_output=True, text=True)
    assert out.stdout.strip() == f".{os.pathsep}/opt/site", out.stderr


def test_mlflow_telemetry_is_off_in_every_process_that_tracks(tmp_path):
    """Issue 20, item 6: MLflow's telemetry tried the network from every process (controller, workers, server)."""
    from ablations.server import server_launch

    shown = (
        "import os; from pathlib import Path; from ablations.tracking import Tracker; "
        f"Tracker('sqlite:///{tmp_path / 'mlflow.db'}', Path({str(tmp_path)!r})).check(); "
        "from mlflow.telemetry.client import get_telemetry_client; "
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client())"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", shown], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["true", "None"], out.stderr
    _, server_env = server_launch(None, None, tmp_path, "127.0.0.1", 5000, 1, env)
    assert server_env["MLFLOW_DISABLE_TELEMETRY"] == "true"
