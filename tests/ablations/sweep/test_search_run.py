"""`senet-ablate search NAME` for real: the references, then each design the loop asks for trained as a sweep
of the study's seeds (ledger, warm workers, MLflow), a design trained before read back, not trained again."""

from __future__ import annotations

import optuna
import pytest
import yaml

from ablations.cli import main
from ablations.paths import ledger_file
from ablations.study.load import load_spec
from ablations.sweep.ledger import Ledger, State
from tests._support.configs import TINY


@pytest.mark.e2e  # about 9 tiny trainings in four sweeps (about 60 s on 2 cores)
def test_a_search_trains_its_designs_through_the_ledger_once_and_resumes(tmp_path, capsys, monkeypatch):
    tree = {"name": "tinysearch", "description": "a tiny real search", "base": TINY,
            "search": {"space": {"se.reduction": [2, 8, {2: 4, 3: "off"}], "se.excitation": ["sigmoid", "tanh"]},
                       "objectives": ["final_val_top1_err", "params"], "budget": {"designs": 3}, "seeds": [0],
                       "reevaluate": [5], "random_arm": False, "intensify": 0, "parallel": 2,
                       "reference_point": {"final_val_top1_err": 100, "params": 400_000}}}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    results = tmp_path / "results"
    assert main(["search", str(path), "--results", str(results), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "search arm: 3 designs trained (0 more from a grid's results), 0 intensified, 0 rejected untrained" in out
    assert "  search-time front: " in out
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        done = [a for a in ledger.attempts() if a.state == State.COMPLETE]
    finally:
        ledger.close()
    again = optuna.load_study(study_name="tinysearch", storage=f"sqlite:///{results / 'search.db'}")
    front = again.user_attrs["reevaluated"]
    assert 1 <= len(front) <= 3
    # the two references (base r = 4: none of the designs) and three designs each once at seed 0, then the front
    # and the references again at the fresh seed 5
    assert len(done) == len({a.key for a in done}) == 2 + 3 + 2 + len(front)
    study = optuna.load_study(study_name="tinysearch", storage=f"sqlite:///{results / 'search.db'}")
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in told}) == 3
    # the same command again: every design has its result; nothing is trained, the loop is done
    assert main(["search", str(path), "--results", str(results), "--no-progress"]) == 0
    assert "search arm: 3 designs trained" in capsys.readouterr().out
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        assert len(ledger.attempts()) == 7 + len(front)
    finally:
        ledger.close()
    # the search's report: the re-evaluated designs with their fresh-seed test error, byte-identical when rebuilt
    assert main(["report", str(path), "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "## Re-evaluated on fresh seeds [5]" in text and "| standard SE | reference |" in text
    assert "## Selection bias" in text and "Budget spent" in text
    first = {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()}
    assert main(["report", str(path), "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "rep").iterdir()} == first
    # --confirm: the fronts' factors as a grid study on fresh seeds, which loads and plans
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(path), "--results", str(results), "--confirm"]) == 0
    confirm = load_spec(str(tmp_path / "tinysearch_confirm.yaml"))
    assert confirm.search is None and confirm.seeds == [6, 7, 8, 9, 10] and "no SE" in [e.label for e in confirm.extra]


@pytest.mark.e2e  # about 10 tiny trainings in four sweeps (about 40 s on 2 cores)
def test_rungs_are_trials_of_their_own_and_the_report_says_how_they_rank(tmp_path):
    tree = {"name": "tinyrungs", "description": "a tiny real search with a rung", "base": TINY,
            "search": {"space": {"se.reduction": [2, 8], "se.excitation": ["sigmoid", "tanh"]},
                       "objectives": ["final_val_top1_err", "params"], "budget": {"designs": 4}, "seeds": [0],
                       "reevaluate": [5], "random_arm": False, "intensify": 0, "parallel": 4, "rungs": [1],
                       "reference_point": {"final_val_top1_err": 100, "params": 400_000}}}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    results = tmp_path / "results"
    assert main(["search", str(path), "--results", str(results), "--no-progress"]) == 0
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        done = [a for a in ledger.attempts() if a.state == State.COMPLETE]
    finally:
        ledger.close()
    epochs = sorted(a.ticket.config["train"]["epochs"] for a in done)
    assert epochs.count(1) == 4  # every design at the rung, a trial of its own with its own (1-epoch) schedule
    study = optuna.load_study(study_name="tinyrungs", storage=f"sqlite:///{results / 'search.db'}")
    full = {tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"}
    pruned = {tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "PRUNED"}
    assert len(full) + len(pruned) == 4 and full and not full & pruned
    assert main(["status", str(path), "--results", str(results)]) == 0  # the rung trials are the search's too
    assert main(["report", str(path), "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "## Rungs against full length" in text and f"| 1 | {len(full)} |" in text


@pytest.mark.e2e  # a controller and a worker process on one tiny search (about 60 s on 2 cores)
def test_a_worker_joins_each_batch_of_a_running_search_and_leaves_when_it_is_over(tmp_path):
    import os
    import subprocess
    import sys
    import time

    tree = {"name": "tinyjoin", "description": "a tiny search two processes train", "base": TINY,
            "search": {"space": {"se.reduction": [2, 8], "se.excitation": ["sigmoid", "tanh"]},
                       "objectives": ["final_val_top1_err", "params"], "budget": {"designs": 3}, "seeds": [0, 1],
                       "reevaluate": [5], "random_arm": False, "intensify": 0, "parallel": 1,
                       "reference_point": {"final_val_top1_err": 100, "params": 400_000}}}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = [sys.executable, "-m", "ablations.cli"]
    log = tmp_path / "controller.log"  # a file, not a pipe: a full pipe would stall the controller
    with open(log, "w") as sink:
        controller = subprocess.Popen([*cli, "search", str(path), "--results", str(results), "--no-progress"],
                                      stderr=sink, stdout=sink, text=True, env=env)  # fmt: skip
    while "sweep tinyjoin:" not in log.read_text():  # the references' sweep is open to join once its banner is out
        assert controller.poll() is None, "the controller ended before its first sweep opened"
        time.sleep(0.2)
    worker = subprocess.run([*cli, "worker", str(path), "--results", str(results), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    controller.wait(timeout=600)
    assert controller.returncode == 0 and worker.returncode == 0, worker.stderr[-2000:] + log.read_text()[-2000:]
    assert worker.stderr.count("worker tinyjoin: ") >= 2  # it joined the references and, later, what was asked
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        done = [a for a in ledger.attempts() if a.state == State.COMPLETE]
    finally:
        ledger.close()
    front = optuna.load_study(study_name="tinyjoin", storage=f"sqlite:///{results / 'search.db'}").user_attrs
    # each trial once: the references and 3 designs at seeds 0 and 1, then the front and the references at seed 5
    assert len(done) == len({a.key for a in done}) == 2 * 2 + 3 * 2 + 2 + len(front["reevaluated"])
