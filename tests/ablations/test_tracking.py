"""Tracking hiccups never fail a trial: writes are buffered and retried, and MLflow is repaired from the ledger."""

import contextlib
import time

import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.manifest import Manifest
from ablations.sweep.repair import parent_run, repair
from ablations.sweep.runlog import RunLog
from ablations.sweep.slots import Slot
from ablations.sweep.status import ticket_of
from ablations.sweep.worker import Worker
from ablations.tracking import Tracker
from tests._support.configs import write_spec
from tests._support.stores import local_ledger, tracker


def locked() -> OperationalError:
    return OperationalError("INSERT INTO metrics", {}, Exception("database is locked"))


def test_buffered_writes_are_retried_in_order_until_they_go_through():
    done, failures = [], {"a": 2, "b": 1}

    def write(name):
        def go():
            if failures.get(name, 0):
                failures[name] -= 1
                raise locked()
            done.append(name)

        return go

    log = RunLog(retry_s=10)
    log.submit(write("a"))
    log.submit(write("b"))
    assert log.call(write("c"))  # after everything submitted before it
    assert done == ["a", "b", "c"]


def test_a_write_that_keeps_failing_is_given_up_with_a_note_not_an_error():
    notes = []

    def always():
        raise locked()

    log = RunLog(retry_s=0.3, log=notes.append)
    began = time.monotonic()
    assert not log.call(always)
    assert time.monotonic() - began < 5 and "gave up on a write" in notes[0]


def test_a_trial_finishes_while_mlflow_is_down_and_its_run_is_rebuilt_from_the_result(tmp_path, monkeypatch):
    spec_path = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1)
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    [trial] = expand(spec)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(trial))
    parent = tracker(results).make_parent("tiny", "x", {})
    manifest = Manifest(spec.name, parent, {trial.key: ticket_of(trial)}, max_retries=0)
    worker = Worker(manifest, results, Slot(0), local_ledger(results), uri)
    worker.runlog = RunLog(retry_s=0.3, log=lambda _: None)

    def down(*args, **kwargs):
        raise locked()

    for name in ("start_trial", "log_epoch", "log_summary", "log_text", "end"):
        monkeypatch.setattr(worker.tracker, name, down)
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == "finished"  # the tracking store never answered; the trial finished
    [done] = ledger.attempts()
    assert done.state == TrialState.COMPLETE and done.run_id is None
    assert tracker(results).trial_runs() == []
    monkeypatch.undo()
    repair(tracker(results), ledger, ledger.attempts(), {trial.key}, results, spec.name, parent, {}, print)
    [run] = tracker(results).trial_runs()
    assert (run.status, run.outcome, run.key) == ("FINISHED", "finished", trial.key)
    assert run.metrics["test_top1_err"] == pytest.approx(_result(results, trial.key)["test_top1_err"])
    assert sorted(tracker(results).history(run.run_id, "val_top1_err")) == [1, 2]


def _result(results, key):
    import json

    return json.loads((results / "runs" / key / "result.json").read_text())["summary"]


def test_a_new_sqlite_store_is_a_copy_of_an_empty_one_and_an_existing_one_is_never_replaced(tmp_path, monkeypatch):
    import sqlite3

    import mlflow

    from ablations.tracking import Tracker

    monkeypatch.setenv("SENET_ABLATE_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a", tmp_path / "b"
    for results in (first, second):
        results.mkdir()
        tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
        tracker.make_parent("tiny", "d", {})
    template = tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty.db"
    assert template.is_file() and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [template.name]
    for results in (first, second):  # each store is its own; MLflow's Default experiment points into its folder
        c = Tracker(f"sqlite:///{results / 'mlflow.db'}", results).client
        assert [e.name for e in c.search_experiments()] == ["senet-ablate/tiny", "Default"]
        assert c.get_experiment("0").artifact_location == (results / "artifacts" / "0").as_uri()
        assert not list(results.glob(".*.tmp"))
    with sqlite3.connect(template) as con:  # the template itself stays empty
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    Tracker(f"sqlite:///{first / 'mlflow.db'}", first)  # an existing store is opened, never replaced
    assert len(Tracker(f"sqlite:///{first / 'mlflow.db'}", first).trial_runs()) == 0
    assert Tracker(f"sqlite:///{first / 'mlflow.db'}", first).find_parent("tiny") is not None


def test_a_tracking_server_that_never_answers_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Issue 19 item 11: a server that accepts connections and never answers hung `sweep` silently for minutes."""
    import socket
    import threading

    from ablations import tracking
    from ablations.cli import main

    monkeypatch.setattr(tracking, "ANSWER_S", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # take every connection, answer nothing
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        spec = write_spec(tmp_path)
        results = tmp_path / "results"
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert main(["sweep", str(spec), "--results", str(results), "--tracking-uri", uri, "--no-progress"]) == 2
    finally:
        stop.set()
        thread.join()
        server.close()
        for s in held:
            s.close()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "accepts connections but sent no answer in 1 s" in err
    assert not results.exists() or not any(results.iterdir())


def test_the_ledger_takes_a_result_before_the_mlflow_backlog_drains_and_another_host_rebuilds_the_run(
    tmp_path, monkeypatch
):
    """Issue 19 item 11: COMPLETE waited behind the buffered MLflow writes (and the ledger keeps the result)."""
    spec, trial, results, ledger, parent, worker = _one_trial_worker(tmp_path)
    seen = []
    slow_epoch = worker.tracker.log_epoch

    def slow(*args, **kwargs):  # a store so slow that the epochs' metrics reach it only once the trial is done
        deadline = time.monotonic() + 30  # a ledger that waited for this backlog would wait all of it
        while ledger.attempts()[0].state.name != "COMPLETE" and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append(("epoch", ledger.attempts()[0].state.name))
        return slow_epoch(*args, **kwargs)

    monkeypatch.setattr(worker.tracker, "log_epoch", slow)
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == "finished"
    assert ("epoch", "COMPLETE") in seen  # the backlog was still draining when the ledger held the result
    [done] = ledger.attempts()
    assert done.result["summary"]["test_top1_err"] == _result(results, trial.key)["test_top1_err"]


def test_a_host_with_its_own_results_folder_rebuilds_a_run_from_the_ledger(tmp_path, monkeypatch):
    """Issue 19 item 12: repair on another host had no result.json: no FINISHED run, or one without metrics."""
    spec, trial, results, ledger, parent, worker = _one_trial_worker(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    worker.runlog = RunLog(retry_s=0.3, log=lambda _: None)

    def down(*args, **kwargs):
        raise locked()

    for name in ("start_trial", "log_epoch", "log_summary", "log_text", "end"):
        monkeypatch.setattr(worker.tracker, name, down)
    assert worker.run_attempt(ledger.claim({trial.key}, Owner.me())) == "finished"
    monkeypatch.undo()
    # the other host shares the ledger and the tracking store, not the folder: no result.json there
    store = Tracker(f"sqlite:///{results / 'mlflow.db'}", elsewhere)
    assert repair(store, ledger, ledger.attempts(), {trial.key}, elsewhere, spec.name, parent, {}, print) == 1
    [run] = store.trial_runs()
    expected = _result(results, trial.key)["test_top1_err"]
    assert run.status == "FINISHED" and run.metrics["test_top1_err"] == pytest.approx(expected)
    assert sorted(store.history(run.run_id, "val_top1_err")) == [1, 2]


def test_sweeps_starting_together_share_one_experiment(tmp_path):
    """Found by the three-controllers fault round: three sweeps of a new study started at one instant raced in
    MLflow's experiment creation (a unique name). Their parent runs: the next two tests."""
    import threading

    results = tmp_path / "results"
    tracker(results)  # the store exists, as Stores.open makes it before anything else
    barrier, found, errors = threading.Barrier(3), [], []

    def start() -> None:
        try:
            t = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
            barrier.wait()
            found.append(t.experiment("together"))
        except Exception as err:  # pragma: no cover - the assertion below shows it
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(set(found)) == 1
    assert list(tracker(results).studies()) == ["together"]


def _parents_of_sweeps_starting_together(results, study: str, n: int = 3) -> list[str]:
    """The parent run each of `n` sweeps of `study` starting at one instant (one thread each) went on with."""
    import threading

    barrier, found, errors = threading.Barrier(n), [], []

    def start() -> None:
        try:
            t, ledger = Tracker(f"sqlite:///{results / 'mlflow.db'}", results), Ledger.open(local_ledger(results))
            barrier.wait()
            found.append(parent_run(t, ledger, study, "x", {"senet.host_device": "cpu"}))
        except Exception as err:  # pragma: no cover - the assertion below shows it
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return found


def test_sweeps_starting_together_keep_one_parent_run(tmp_path):
    """CI found two of three sweeps starting together each keeping a parent run of their own: MLflow stamps a run's
    start before inserting it, so 'the earliest run' was not the same run for everyone. The ledger picks one now."""
    results = tmp_path / "results"
    tracker(results)
    Ledger.open(local_ledger(results))
    for study in ("a", "b", "c", "d"):
        found = _parents_of_sweeps_starting_together(results, study)
        assert len(set(found)) == 1, (study, found)
        runs = tracker(results).client.search_runs([tracker(results).experiment(study)])
        assert [r.info.run_id for r in runs] == found[:1] and runs[0].info.status == "RUNNING"


def test_a_parent_run_is_found_kept_or_replaced_through_the_ledger(tmp_path):
    results = tmp_path / "results"
    t, ledger = tracker(results), Ledger.open(local_ledger(results))
    earlier = t.make_parent("tiny", "a first sweep from before parents were in the ledger", {})
    t.finish_parent(earlier, True)
    assert parent_run(t, ledger, "tiny", "x", {}) == earlier == ledger.parent("tiny")
    assert t.client.get_run(earlier).info.status == "RUNNING"
    assert parent_run(t, ledger, "tiny", "x", {}) == earlier  # a resumed sweep
    t.client.delete_run(earlier)  # a researcher deleted it in the UI
    again = parent_run(t, ledger, "tiny", "x", {})
    assert again != earlier and ledger.parent("tiny") == again and t.find_parent("tiny") == again


def _one_trial_worker(tmp_path):
    """One tiny trial queued in a new ledger, its study's parent run, and an in-process worker for it."""
    spec_path = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1)
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    [trial] = expand(spec)
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(trial))
    parent = tracker(results).make_parent("tiny", "x", {})
    manifest = Manifest(spec.name, parent, {trial.key: ticket_of(trial)}, max_retries=0)
    worker = Worker(manifest, results, Slot(0), local_ledger(results), f"sqlite:///{results / 'mlflow.db'}")
    return spec, trial, results, ledger, parent, worker


def test_a_second_running_run_of_a_completed_attempt_is_ended_as_superseded(tmp_path):
    """make faults (outage past the retry window): a completed attempt's stale second run stayed RUNNING, since the
    repair skipped every run of a COMPLETE attempt as 'handled above'; only its recorded run is."""
    from ablations.sweep.repair import trial_info

    spec, trial, results, ledger, parent, worker = _one_trial_worker(tmp_path)
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == "finished"
    [done] = ledger.attempts()
    stale = tracker(results).start_trial(spec.name, parent, trial_info(done), {})  # the same attempt's tags
    assert repair(tracker(results), ledger, ledger.attempts(), {trial.key}, results, spec.name, parent, {}, print) == 1
    runs = {r.run_id: r for r in tracker(results).trial_runs()}
    assert runs[done.run_id].status == "FINISHED" and runs[stale].status == "KILLED"
    assert runs[stale].tags["senet.ended_by"].startswith(f"superseded: the attempt's result is in run {done.run_id}")


def test_two_first_views_written_at_once_both_succeed(tmp_path, monkeypatch):
    """make faults (concurrent end-of-sweep repairs): MLflow's SQL store looks for a tag, then inserts it, so two
    writers of a study's first view raced on the unique key and one repair failed. The loser writes again."""
    from mlflow.exceptions import MlflowException

    from ablations.mlflow_names import VIEW_TAG

    store = tracker(tmp_path / "results")
    real, raced = store.client.set_experiment_tag, []

    def racing(*args):
        if not raced:
            raced.append(args)
            real(*args)  # the other writer's insert lands first ...
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key")
        return real(*args)

    monkeypatch.setattr(store.client, "set_experiment_tag", racing)
    store.set_view("tiny", ["se.excitation"])
    experiment = store.client.get_experiment(store.experiment("tiny"))
    assert raced and VIEW_TAG in experiment.tags
