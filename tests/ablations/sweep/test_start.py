"""How a sweep starts: its first worker is started before the controller sets up MLflow, waits for the manifest,
and never outlives a sweep that ends before writing one."""

import dataclasses
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ablations.cli import main
from ablations.sweep import start
from ablations.sweep.ledger import pid_alive
from ablations.sweep.manifest import Manifest
from ablations.sweep.worker import wait_for_manifest
from tests._support.configs import write_spec
from tests._support.processes import ENV, wait_for
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger

pytestmark = pytest.mark.slow


def _waiting_workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "--wait-for" in p.cmdline()]


def test_the_first_worker_starts_before_mlflow_is_set_up_and_trains_the_sweep(tmp_path, monkeypatch, capsys):
    spec, results = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}), tmp_path / "results"
    seen = []
    real = start.Tracker

    def tracker(uri, folder):  # the controller's MLflow set-up begins here
        seen.append([p.pid for p in _waiting_workers()])
        return real(uri, folder)

    monkeypatch.setattr(start, "Tracker", tracker)
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    assert len(seen) == 1 and len(seen[0]) == 1, seen  # one worker, already started
    assert_each_trial_complete_once(local_ledger(results), results, 2)
    assert {a.owner.pid for a in attempts(local_ledger(results))} == set(seen[0])  # it trained both trials


def test_a_sweep_that_ends_before_its_manifest_ends_its_first_worker_and_writes_nothing(tmp_path, capsys):
    spec, results = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}), tmp_path / "results"
    results.mkdir()
    (results / "mlflow.db").write_bytes(b"not a database")  # the tracking store fails after the worker started
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()  # it was a traceback from MLflow's store
    assert line.startswith("senet-ablate: error: --tracking-uri: cannot reach sqlite:") and "not a database" in line
    assert not _waiting_workers()
    assert sorted(p.name for p in results.iterdir()) == ["mlflow.db"]  # no ledger, no worker log, no manifest


def test_a_first_worker_whose_sweep_dies_before_the_manifest_exits(tmp_path):
    """A sweep killed (kill -9) between starting its first worker and writing the manifest."""
    results = tmp_path / "results"
    code = (
        "import sys; from pathlib import Path; from ablations.sweep.slots import Slot, spawn_worker; "
        f"r = Path({str(results)!r}); "
        "p = spawn_worker(r, r / 'sweeps' / 'x.json', 'x', Slot(0), 1, (str(r / 'ledger.db'), 'sqlite:///' + "
        "str(r / 'mlflow.db')), 'none'); print(p.pid)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    wait_for(lambda: not pid_alive(pid, None), timeout=60)
    assert not (results / "sweeps").exists() and not (results / "ledger.db").exists()


def test_a_first_worker_waits_for_its_own_sweeps_manifest_not_an_earlier_ones(tmp_path):
    """A rerun of the same trials finds the last sweep's manifest in place (same id): its first worker must not
    take that one's retries, options and code version for this sweep's."""
    earlier = Manifest("tiny", None, {}, max_retries=1)
    path = earlier.write(tmp_path)
    stale = Manifest.state(path)

    def sweep_writes_its_own() -> None:
        time.sleep(0.3)
        dataclasses.replace(earlier, max_retries=3).write(tmp_path)

    writer = threading.Thread(target=sweep_writes_its_own)
    writer.start()
    got = wait_for_manifest(path, os.getppid(), stale)  # in-process: "our sweep" is the test's parent
    writer.join()
    assert got is not None and got.max_retries == 3
    assert wait_for_manifest(path, os.getppid() + 100_000, "none") is None  # not our parent: its sweep is gone
