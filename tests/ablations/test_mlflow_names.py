"""Metrics in MLflow under grouped names (`train/`, `val/`, `test/`, `cost/`), read back under the engine's names
from runs of this and of the earlier flat naming; the runs table a study's link opens."""

import json

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablations.mlflow_names import LOGGED, VIEW_TAG, internal, logged, runs_link, view_state
from ablations.tracking import Tag, Tracker

SUMMARY = {"final_val_top1_err": 31.0, "best_val_top1_err": 30.0, "test_top1_err": 29.5, "test_top5_err": 4.0,
           "train_time_s": 12.0, "params": 250_000.0, "gflops": 0.01, "epochs": 2.0}  # fmt: skip
EPOCHS = {1: {"epoch": 1, "train_loss": 1.2, "lr": 0.1, "val_top1_err": 40.0, "epoch_time_s": 6.0},
          2: {"epoch": 2, "train_loss": 0.9, "lr": 0.05, "val_top1_err": 31.0, "epoch_time_s": 6.0}}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    return Tracker(f"sqlite:///{results / 'mlflow.db'}", results)


def _trial(key="k1", seed=0):
    return {"key": key, "config_hash": "h", "seed": seed, "label": "se.reduction=8", "factors": {"se.reduction": 8},
            "flat": {"se.reduction": 8, "se.enabled": True}}  # fmt: skip


def test_every_engine_name_has_one_grouped_name_and_back():
    assert len(set(LOGGED.values())) == len(LOGGED)
    assert all(v.split("/")[0] in ("train", "val", "test", "cost") for v in LOGGED.values())
    assert internal(logged(SUMMARY)) == SUMMARY
    assert internal({"test_top1_err": 1.0, "test/top1_err": 2.0, "custom": 3.0}) == {
        "test_top1_err": 2.0,
        "custom": 3.0,
    }


def test_a_new_run_logs_grouped_names_and_reads_back_under_the_engines(store):
    run_id = store.start_trial("demo", None, _trial(), {})
    for epoch, metrics in EPOCHS.items():
        store.log_epoch(run_id, epoch, metrics)
    store.log_summary(run_id, SUMMARY, "finished")
    store.end(run_id, "FINISHED")
    keys = set(store.client.get_run(run_id).data.metrics)
    assert {
        "train/loss",
        "train/lr",
        "val/top1_err",
        "val/final_top1_err",
        "val/best_top1_err",
        "test/top1_err",
        "test/top5_err",
        "cost/params",
        "cost/gflops",
        "cost/train_seconds",
        "cost/epoch_seconds",
    } <= keys
    assert all("/" in k for k in keys), keys
    (run,) = store.trial_runs(status="FINISHED")
    assert run.metrics["test_top1_err"] == 29.5 and run.metrics["final_val_top1_err"] == 31.0
    assert store.history(run_id, "val_top1_err") == {1: 40.0, 2: 31.0}
    assert store.history(run_id, "lr") == {1: 0.1, 2: 0.05}


def test_a_run_logged_with_the_earlier_flat_names_is_still_read(store):
    """A run of the previous release, written as it wrote them: flat names, straight through MLflow's client."""
    client = MlflowClient(tracking_uri=store.uri)
    exp = store.experiment("old")
    tags = {Tag.ROLE: "trial", Tag.STUDY: "old", Tag.KEY: "k-old", Tag.SEED: "1", Tag.LABEL: "x",
            f"{Tag.FACTOR}se.reduction": "16"}  # fmt: skip
    run_id = client.create_run(exp, tags=tags).info.run_id
    client.log_batch(run_id, metrics=[Metric("val_top1_err", v, 0, e) for e, v in ((1, 50.0), (2, 45.0))])
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in SUMMARY.items()])
    client.set_terminated(run_id, "FINISHED")
    (run,) = store.trial_runs(["k-old"])
    assert run.metrics == SUMMARY | {"val_top1_err": 45.0}  # the last epoch's, as MLflow keeps it
    assert store.history(run_id, "val_top1_err") == {1: 50.0, 2: 45.0}
    store.refresh_views()  # `ui` on such a store: its view sorts and shows the names its runs have
    view = json.loads(store.client.get_experiment(exp).tags[VIEW_TAG])
    assert view["orderByKey"] == "metrics.`test_top1_err`"
    assert "params.`se.reduction`" in view["selectedColumns"] and "tags.`senet.seed`" in view["selectedColumns"]


def test_a_trial_gives_its_study_the_view_its_link_opens(store):
    store.start_trial("demo", None, _trial(), {})
    exp = store.experiment("demo")
    view = json.loads(store.client.get_experiment(exp).tags[VIEW_TAG])
    assert view == json.loads(view_state(["se.reduction"]))
    assert view["orderByKey"] == "metrics.`test/top1_err`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:2] == ["metrics.`test/top1_err`", "metrics.`val/final_top1_err`"]
    assert runs_link("http://127.0.0.1:5000", exp) == (
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=senet-ablate"
    )
