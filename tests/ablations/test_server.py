"""`ui` and `server`: what the MLflow child is started with; no secret on its command line (visible in `ps`)."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ablations.server import server_launch, ui_launch
from ablations.tracking import Tracker
from ablations.urls import with_driver
from tests._support.processes import ENV, free_port, port_open, wait_for

URI = "postgresql://u:secret@h/db"


def test_ui_passes_the_tracking_store_by_environment_never_on_the_command_line(tmp_path):
    """Item 9 (issue 19): `ui` put the tracking URI, password included, on the MLflow child's command line."""
    cmd, env = ui_launch(URI, tmp_path, "127.0.0.1", 5000, 1, {"PATH": "/bin"})
    assert not any("secret" in arg for arg in cmd), cmd
    assert env["MLFLOW_BACKEND_STORE_URI"] == with_driver(URI, "x") and env["PATH"] == "/bin"
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and "--backend-store-uri" not in cmd


def test_ui_on_sqlite_gets_the_results_folders_artifacts_by_environment(tmp_path):
    cmd, env = ui_launch(None, tmp_path, "127.0.0.1", 5000, 1, {})
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == (tmp_path.resolve() / "artifacts").as_uri()
    assert "--default-artifact-root" not in cmd


def test_server_passes_the_database_by_environment(tmp_path):
    cmd, env = server_launch(URI, None, tmp_path, "0.0.0.0", 5001, 4, {"MLFLOW_BACKEND_STORE_URI": "ignored"})
    assert not any("secret" in arg for arg in cmd), cmd
    assert env["MLFLOW_BACKEND_STORE_URI"] == with_driver(URI, "x")
    _, env = server_launch(None, None, tmp_path, "0.0.0.0", 5001, 4, {"MLFLOW_BACKEND_STORE_URI": URI})
    assert env["MLFLOW_BACKEND_STORE_URI"] == with_driver(URI, "x")
    _, env = server_launch(None, None, tmp_path / "r", "0.0.0.0", 5001, 4, {})
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{Path(tmp_path / 'r').resolve() / 'mlflow.db'}"


@pytest.mark.e2e
def test_the_ui_child_serves_the_store_it_was_given_by_environment(tmp_path):
    """The real `mlflow ui` reads the store from MLFLOW_BACKEND_STORE_URI: it lists the results folder's study."""
    results = tmp_path / "results"
    Tracker(f"sqlite:///{results / 'mlflow.db'}", results).make_parent("tiny", "a study with one run so far", {})
    port = free_port()
    cmd = [sys.executable, "-m", "ablations.cli", "ui", "--results", str(results), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: port_open(port), timeout=90, every=0.5)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        with urllib.request.urlopen(url, timeout=10) as page:
            names = [e["name"] for e in json.load(page)["experiments"]]
        children = [p for p in Path("/proc").glob("[0-9]*") if f"--port\0{port}" in _cmdline(p) and "mlflow" in
                    _cmdline(p)]  # fmt: skip
        assert children and not any("mlflow.db" in _cmdline(p) for p in children)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert "senet-ablate/tiny" in names


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.e2e
def test_the_printed_link_opens_the_training_view_with_every_trial_and_its_columns(tmp_path):
    """`ui`'s link in a real browser: MLflow's model-training view (not GenAI), the trials in one flat list sorted
    by test top-1 error, with the errors, the factor and the seed as columns (screenshot kept)."""
    from tests._support.browser import dom, screenshot

    results = tmp_path / "results"
    store = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
    parent = store.make_parent("tiny", "a small study", {})
    for seed, (excitation, err) in enumerate([("sigmoid", 30.5), ("tanh", 33.0), ("sigmoid", 29.0)]):
        trial = {"key": f"k{seed}", "config_hash": excitation, "seed": seed, "label": f"se.excitation={excitation}",
                 "factors": {"se.excitation": excitation}, "flat": {"se.excitation": excitation}}  # fmt: skip
        run = store.start_trial("tiny", parent, trial, {})
        for epoch in (1, 2):
            store.log_epoch(run, epoch, {"val_top1_err": err + 10 / epoch, "train_loss": 1 / epoch, "lr": 0.1})
        store.log_summary(run, {"test_top1_err": err, "final_val_top1_err": err + 5, "best_val_top1_err": err + 4,
                                "test_top5_err": 3.0}, "finished")  # fmt: skip
        store.end(run, "FINISHED")
    store.finish_parent(parent, True)
    port = free_port()
    cmd = [sys.executable, "-m", "ablations.cli", "ui", "--results", str(results), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = next(line for line in proc.stdout if "tiny: " in line or "Traceback" in line)
        link = line.split("tiny: ", 1)[1].strip()
        assert link == f"http://127.0.0.1:{port}/#/experiments/{store.experiment('tiny')}/runs?" + (
            "workflowType=machine_learning&viewStateShareKey=senet-ablate"
        )
        wait_for(lambda: port_open(port), timeout=90, every=0.5)
        page = dom(link)
        screens = Path(os.environ.get("SENET_SCREENS", tmp_path))
        screenshot(link, screens / "ui_runs.png")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert "Model training" in page and "Judges" not in page and "Evaluation runs" not in page  # the GenAI side nav
    assert ">Training runs<" not in page  # the GenAI view's title of this page
    names = [page.index(f"{e} s{s}") for e, s in (("sigmoid", 2), ("sigmoid", 0), ("tanh", 1))]
    assert names == sorted(names)  # every trial, flat, best test top-1 error first
    for column in ("test/top1_err", "val/final_top1_err", "se.excitation", "senet.seed"):
        assert f">{column}<" in page, column
