"""Issue 22 items 1-2: MLflow holds plain values that filter and group as researchers write them, a network without
SE logs no SE option but `se.enabled`, and runs logged with JSON-encoded values (earlier releases) still read back."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.entities import Param

from ablations.params import logged_params, param_text, read_param
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.tracking import Tracker
from tests._support.configs import write_spec


@pytest.mark.parametrize(
    ("value", "text"),
    [("tanh", "tanh"), (4, "4"), (0.1, "0.1"), ([2, 3], "[2, 3]"), (False, "false"), (None, "null"),
     ("4", '"4"'), ("true", '"true"'), ("", '""'), ("a b", "a b")],
)  # fmt: skip
def test_a_value_is_logged_plain_and_read_back_exactly(value, text):
    assert param_text(value) == text
    assert read_param(text) == value and type(read_param(text)) is type(value)


def test_a_value_logged_as_json_by_an_earlier_release_reads_back_the_same():
    for value in ("tanh", 4, [2, 3], False, None, "4"):
        assert read_param(json.dumps(value)) == value


def _trials(tmp_path):
    spec = write_spec(
        tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}], seeds=1
    )  # sigmoid, tanh, and a network without SE
    return expand(load_spec(spec), {})


def _log(tracker: Tracker, trial) -> str:
    info = {"key": trial.key, "config_hash": trial.config_hash, "seed": trial.seed, "label": trial.label,
            "factors": trial.factors, "attempt": 1, "attempt_id": 1, "flat": trial.config.flat()}  # fmt: skip
    return tracker.start_trial("tiny", None, info, {})


def test_mlflow_filters_and_groups_runs_by_plain_values(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path)
    trials = _trials(tmp_path)
    ids = {t.label: _log(tracker, t) for t in trials}
    # MLflow's fluent API as a notebook uses it, on this store only for this test (set_tracking_uri would leave the
    # URI in the process's environment for every later test)
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    exp = [tracker.experiment("tiny")]
    tanh = mlflow.search_runs(experiment_ids=exp, filter_string="params.`se.excitation` = 'tanh'")
    assert list(tanh["run_id"]) == [ids[next(t.label for t in trials if t.factors.get("se.excitation") == "tanh")]]
    by_tag = mlflow.search_runs(experiment_ids=exp, filter_string="tags.`factor.se.excitation` = 'tanh'")
    assert len(by_tag) == 1
    frame = mlflow.search_runs(experiment_ids=exp)
    groups = frame.groupby("params.se.excitation", dropna=False).size().to_dict()
    assert {k: v for k, v in groups.items() if isinstance(k, str)} == {"sigmoid": 1, "tanh": 1}, groups
    assert set(frame["params.se.enabled"]) == {"true", "false"}
    assert set(frame["params.train.epochs"]) == {"2"}


def test_a_network_without_se_logs_no_se_option_but_its_switch(tmp_path):
    no_se = next(t for t in _trials(tmp_path) if not t.config.se.enabled)
    flat = no_se.config.flat()
    logged = logged_params(flat)
    assert logged["se.enabled"] is False
    assert not [k for k in logged if k.startswith("se.") and k != "se.enabled"]
    assert {k: v for k, v in logged.items() if not k.startswith("se.")} == {
        k: v for k, v in flat.items() if not k.startswith("se.")
    }
    with_se = next(t for t in _trials(tmp_path) if t.config.se.enabled)
    assert logged_params(with_se.config.flat()) == with_se.config.flat()


def test_a_run_logged_with_json_values_still_gives_its_configuration(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path)
    trial = _trials(tmp_path)[0]
    run_id = _log(tracker, trial)
    new_run, new_config = tracker.trial(run_id, "--run")
    client = mlflow.MlflowClient(uri)
    old = client.create_run(client.get_run(run_id).info.experiment_id, tags=client.get_run(run_id).data.tags)
    params = [Param(k, json.dumps(v)) for k, v in trial.config.flat().items()]  # as releases before 22 logged them
    for i in range(0, len(params), 100):
        client.log_batch(old.info.run_id, params=params[i : i + 100])
    _, old_config = tracker.trial(old.info.run_id, "--run")
    assert old_config == new_config == trial.config
