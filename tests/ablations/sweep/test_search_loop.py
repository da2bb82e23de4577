"""The search's ask/tell loop on a fake objective with a known answer: the error a known function of the design,
the params the network's own, so the true front is known and checked."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml

from ablations.config import Host
from ablations.pareto import front_mask
from ablations.study.spec import parse_spec
from ablations.sweep.search_loop import choices, run_search
from tests._support.configs import TINY

CPU = Host("cpu")
GATE = {"sigmoid": 0.0, "tanh": 1.0, "relu": 3.0}


def known_error(settings):
    """Validation error a known function of the design: worse with r and with any gate but sigmoid."""
    return 10.0 + 2 * math.log2(settings["se.reduction"]) + GATE[settings["se.excitation"]]


def spec_of(**search):
    tree = {"name": "fake", "description": "a fake objective", "base": TINY,
            "search": {"space": {"se.reduction": [2, 4, 8, 16], "se.excitation": ["sigmoid", "tanh", "relu"]},
                       "objectives": ["final_val_top1_err", "params"], "budget": {"designs": 12},
                       "reference_point": {"final_val_top1_err": 30, "params": 400_000}, **search}}  # fmt: skip
    return parse_spec(tree)


class Fake:
    """The evaluator: records every design it was asked to train, at which seeds."""

    def __init__(self, die_after: int | None = None):
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.die_after = die_after

    def __call__(self, design, seeds):
        if self.die_after is not None and len(self.calls) == self.die_after:
            raise RuntimeError("controller killed")
        self.calls.append((design.label, tuple(seeds)))
        return {"final_val_top1_err": known_error(design.settings)}


def test_a_budget_of_the_whole_space_recovers_the_known_front(tmp_path):
    fake = Fake()
    arms = run_search(spec_of(random_arm=False), f"sqlite:///{tmp_path / 'search.db'}", fake, CPU)
    found = arms["search"]
    assert len(found.designs) == 12 and len(fake.calls) == 12  # every design trained once, at the common seeds
    assert {seeds for _, seeds in fake.calls} == {(0, 1)}
    labels = list(found.designs)
    values = np.array([found.designs[label] for label in labels])
    front = {labels[i] for i in np.flatnonzero(front_mask(values))}
    assert front == {f"se.reduction={r}, se.excitation=sigmoid" for r in (2, 4, 8, 16)}  # sigmoid at every r
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert study.metric_names == ["final_val_top1_err", "params"]  # Optuna's own tools read it
    assert set(study.best_trials[0].params) == {"se.reduction", "se.excitation"}


def test_infeasible_designs_are_never_trained_and_cost_no_budget(tmp_path):
    fake = Fake()
    spec = spec_of(random_arm=False, constraints={"params": {"max": 275_000}}, budget={"designs": 4})
    found = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", fake, CPU)["search"]
    assert len(found.designs) == 4 and len(fake.calls) == 4
    # r = 2 puts 16 + 64 + 256 hidden units... above the cap: it never reaches the evaluator
    assert not any(label.startswith("se.reduction=2,") for label, _ in fake.calls)
    assert all(v[1] <= 275_000 for v in found.designs.values())
    assert all(reason.startswith("params ") for reason in found.infeasible.values())


def test_the_random_arm_has_the_same_budget_and_its_own_study(tmp_path):
    fake = Fake()
    arms = run_search(spec_of(budget={"designs": 5}), f"sqlite:///{tmp_path / 'search.db'}", fake, CPU)
    assert [len(a.designs) for a in arms.values()] == [5, 5]
    names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'search.db'}")]
    assert sorted(names) == ["fake", "fake:random"]


def test_a_rerun_resumes_and_a_design_asked_but_never_told_is_evaluated_then(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    spec = spec_of(random_arm=False, budget={"designs": 6})
    with pytest.raises(RuntimeError, match="controller killed"):
        run_search(spec, storage, Fake(die_after=3), CPU)
    study = optuna.load_study(study_name="fake", storage=storage)
    *told, last = study.trials  # 3 designs trained and told (a re-proposal told from them too), one asked
    assert {t.state.name for t in told} == {"COMPLETE"} and last.state.name == "RUNNING"
    assert len({tuple(sorted(t.params.items())) for t in told}) == 3
    again = Fake()
    found = run_search(spec, storage, again, CPU)["search"]
    assert len(found.designs) == 6 and len(again.calls) == 3  # the one left RUNNING, then two new ones
    assert again.calls[0][0] == _label(last.params)


def _label(params):
    levels = {k: choices(v) for k, v in spec_of().search.space.items()}
    return ", ".join(f"{k}={levels[k][params[k]]}" for k in ("se.reduction", "se.excitation"))


SCRIPT = """
import sys, time
from ablations.config import Host
from ablations.study.spec import parse_spec
from ablations.sweep.search_loop import run_search
from tests.ablations.sweep.test_search_loop import known_error, spec_of

def slow(design, seeds):
    print("training", design.label, flush=True)
    time.sleep(0.2)
    return {"final_val_top1_err": known_error(design.settings)}

run_search(spec_of(random_arm=False, budget={"designs": 8}), sys.argv[1], slow, Host("cpu"))
print("done", flush=True)
"""


@pytest.mark.e2e  # two controller processes (about 15 s)
def test_kill_9_of_the_controller_loses_and_duplicates_nothing(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, storage], stdout=subprocess.PIPE, text=True, env=env)
    trained = []
    while len(trained) < 4:
        line = proc.stdout.readline()
        assert line, "the controller ended before it was killed"
        trained.append(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    again = subprocess.run([sys.executable, "-c", SCRIPT, storage], capture_output=True, text=True, env=env,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "done", again.stderr
    study = optuna.load_study(study_name="fake", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    designs = {tuple(sorted(t.params.items())) for t in complete}
    assert len(designs) == 8 and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # what was trained before the kill and told is not trained again; the one killed mid-training is, once
    before = {line.split(" ", 1)[1] for line in trained[:-1]}
    after = [line.split(" ", 1)[1] for line in again.stdout.splitlines() if line.startswith("training ")]
    assert not before & set(after) and len(after) == len(set(after))


def test_status_reads_a_search_as_the_sweep_of_what_it_asked_and_report_refuses_it(tmp_path, capsys):
    """No expansion of the spec lists a sampler's designs: `searched` reads them back from the Optuna studies (each
    design once, the references first), which `status` lists; `report` refuses, as a grid report of them would print
    test errors of designs selected on validation error."""
    from ablations.cli import main
    from ablations.study.searched import searched

    results = tmp_path / "results"
    results.mkdir()
    spec = spec_of(budget={"designs": 3}, constraints={"params": {"max": 275_000}})
    arms = run_search(spec, f"sqlite:///{results / 'search.db'}", Fake(), CPU)
    swept = searched(spec, results)
    labels = [e.label for e in swept.extra]
    assert labels[:2] == ["standard SE", "no SE"] and swept.seeds == [0, 1] and swept.search is None
    asked = {label for arm in arms.values() for label in arm.designs}
    assert set(labels[2:]) == asked and len(labels) == len(set(labels))  # infeasible ones were never trained
    assert searched(spec, tmp_path / "elsewhere").extra[0].label == "standard SE"  # no search yet: the references
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(exclude_defaults=True)))
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"0 done, 0 running, 0 failed, {2 * len(labels)} pending" in out and "no SE seed 1" in out
    assert main(["report", str(path), "--results", str(results)]) == 2
    assert "is a search; its report (fronts re-evaluated on fresh seeds) is not built yet" in capsys.readouterr().err
