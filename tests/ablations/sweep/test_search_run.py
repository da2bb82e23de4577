"""`senet-ablate search NAME` for real: the references, then each design the loop asks for trained as a sweep
of the study's seeds (ledger, warm workers, MLflow), a design trained before read back, not trained again."""

from __future__ import annotations

import optuna
import pytest
import yaml

from ablations.cli import main
from ablations.paths import ledger_file
from ablations.sweep.ledger import Ledger, State
from tests._support.configs import TINY


@pytest.mark.e2e  # about 8 tiny trainings, each a sweep of its own (about 60 s on 2 cores)
def test_a_search_trains_its_designs_through_the_ledger_once_and_resumes(tmp_path, capsys):
    tree = {"name": "tinysearch", "description": "a tiny real search", "base": TINY,
            "search": {"space": {"se.reduction": [2, 8, {2: 4, 3: "off"}], "se.excitation": ["sigmoid", "tanh"]},
                       "objectives": ["final_val_top1_err", "params"], "budget": {"designs": 3}, "seeds": [0],
                       "reevaluate": [5], "random_arm": False,
                       "reference_point": {"final_val_top1_err": 100, "params": 400_000}}}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    results = tmp_path / "results"
    assert main(["search", str(path), "--results", str(results), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "search arm: 3 designs trained, 0 rejected untrained, 0 without a result" in out and "  front: " in out
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        done = [a for a in ledger.attempts() if a.state == State.COMPLETE]
    finally:
        ledger.close()
    assert len(done) == len({a.key for a in done}) == 2 + 3  # the two references (base r = 4: none of the designs)
    # and three designs, each once
    study = optuna.load_study(study_name="tinysearch", storage=f"sqlite:///{results / 'search.db'}")
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in told}) == 3
    # the same command again: every design has its result; nothing is trained, the loop is done
    assert main(["search", str(path), "--results", str(results), "--no-progress"]) == 0
    assert "search arm: 3 designs trained" in capsys.readouterr().out
    ledger = Ledger.open(str(ledger_file(results)))
    try:
        assert len(ledger.attempts()) == 5
    finally:
        ledger.close()
