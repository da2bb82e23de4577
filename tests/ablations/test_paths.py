"""The environment variables the harness reads: a bad value is one line naming the variable, exit 2."""

import subprocess
import sys

import pytest

from ablations.errors import SenetError
from ablations.paths import SECONDS_ENV, env_seconds
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
