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
from ablations.errors import SenetError
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

    def __call__(self, designs, seeds):
        out = []
        for design in designs:
            if self.die_after is not None and len(self.calls) == self.die_after:
                raise RuntimeError("controller killed")
            self.calls.append((design.label, tuple(seeds)))
            out.append({seed: {"final_val_top1_err": known_error(design.settings) + 0.01 * seed} for seed in seeds})
        return out

    def trained(self, seeds=(0, 1)):
        return [label for label, s in self.calls if s == tuple(seeds)]


def test_a_budget_of_the_whole_space_recovers_the_known_front(tmp_path):
    fake = Fake()
    arms = run_search(spec_of(random_arm=False, intensify=0), f"sqlite:///{tmp_path / 'search.db'}", fake, CPU)
    found = arms["search"]
    assert len(found.designs) == 12 and len(fake.calls) == 12  # every design trained once, at the common seeds
    assert {seeds for _, seeds in fake.calls} == {(0, 1)}
    assert all(v[0] == pytest.approx(known_error(_settings(label)) + 0.005) for label, v in found.designs.items())
    labels = list(found.designs)
    values = np.array([found.designs[label] for label in labels])
    front = {labels[i] for i in np.flatnonzero(front_mask(values))}
    assert front == {f"se.reduction={r}, se.excitation=sigmoid" for r in (2, 4, 8, 16)}  # sigmoid at every r
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert study.metric_names == ["final_val_top1_err", "params"]  # Optuna's own tools read it
    assert set(study.best_trials[0].params) == {"se.reduction", "se.excitation"}


def test_infeasible_designs_are_never_trained_and_cost_no_budget(tmp_path):
    fake = Fake()
    spec = spec_of(random_arm=False, constraints={"params": {"max": 275_000}}, budget={"designs": 4}, intensify=0)
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
    spec = spec_of(random_arm=False, budget={"designs": 6}, parallel=1, intensify=0)
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


def test_a_batch_of_designs_is_asked_before_any_is_told_and_trained_together(tmp_path):
    batches = []

    def evaluate(designs, seeds):
        batches.append([d.label for d in designs])
        return [{s: {"final_val_top1_err": known_error(d.settings)} for s in seeds} for d in designs]

    spec = spec_of(random_arm=False, budget={"designs": 7}, parallel=3, intensify=0)
    found = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", evaluate, CPU)["search"]
    assert found.trained == 7 and [len(b) for b in batches] == [3, 3, 1]  # the last batch only what the budget left
    assert len({label for b in batches for label in b}) == 7  # a design proposed twice in a batch trains once


def test_a_design_entering_the_front_gets_the_intensification_seed_and_its_mean_over_all(tmp_path):
    fake = Fake()
    spec = spec_of(random_arm=False, budget={"designs": 12}, intensify=1, reevaluate=[100, 101])
    found = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", fake, CPU)["search"]
    extra = {label for label, seeds in fake.calls if seeds == (2,)}  # the next seed after the common 0, 1
    assert extra == set(found.intensified) and extra
    labels = list(found.designs)
    on = {labels[i] for i in np.flatnonzero(front_mask(np.array([found.designs[k] for k in labels])))}
    assert on <= extra  # every design of the final front was intensified when it entered (some left it later)
    for label in extra:
        assert found.seeds[label] == [0, 1, 2]
        assert found.designs[label][0] == pytest.approx(known_error(_settings(label)) + 0.01)  # mean of 0, 1, 2
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert sorted(len(t.user_attrs["seeds"]) for t in study.trials if t.state.name == "COMPLETE")[-1] == 3


def test_a_grid_s_results_start_the_sampler_free_and_the_random_arm_is_not_given_them(tmp_path):
    from ablations.study.search_plan import design

    spec = spec_of(budget={"designs": 3}, intensify=0)
    given = [design(spec, {"se.reduction": r, "se.excitation": "sigmoid"}, CPU) for r in (2, 4)]
    warm = [(d, {0: {"final_val_top1_err": 1.0}, 1: {"final_val_top1_err": 2.0}}) for d in given]
    fake = Fake()
    arms = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", fake, CPU, warm=warm)
    found = arms["search"]
    assert found.warm == {d.label for d in given} and found.trained == 3 and len(found.designs) >= 5
    assert found.designs[given[0].label][0] == 1.5 and not {d.label for d in given} & set(fake.trained())
    assert not arms["random"].warm and arms["random"].trained == 3
    again = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", Fake(), CPU, warm=warm)["search"]
    assert again.warm == found.warm and again.trained == 3  # given once: a rerun resumes, adds nothing


def _settings(label):
    out = {}
    for part in label.split(", "):
        key, value = part.split("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def _label(params):
    levels = {k: choices(v) for k, v in spec_of().search.space.items()}
    return ", ".join(f"{k}={levels[k][params[k]]}" for k in ("se.reduction", "se.excitation"))


SCRIPT = """
import sys, time
from ablations.config import Host
from ablations.errors import SenetError
from ablations.study.spec import parse_spec
from ablations.sweep.search_loop import run_search
from tests.ablations.sweep.test_search_loop import known_error, spec_of

def slow(designs, seeds):
    out = []
    for design in designs:
        print("training", design.label, flush=True)
        time.sleep(0.2)
        out.append({s: {"final_val_top1_err": known_error(design.settings)} for s in seeds})
    return out

run_search(spec_of(random_arm=False, budget={"designs": 8}, parallel=1, intensify=0), sys.argv[1], slow, Host("cpu"))
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


def test_status_reads_a_search_as_the_sweep_of_what_it_asked_and_report_reads_its_search(tmp_path, capsys):
    """No expansion of the spec lists a sampler's designs: `searched` reads them back from the Optuna studies (each
    design once, the references first), which `status` lists; `report` writes the search's own report, never a grid
    report of designs selected on validation error."""
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
    intensified = {label for arm in arms.values() for label in arm.intensified}
    assert [s.name for s in swept._included] == ["fake__intensify", "fake__reevaluate"]
    assert {e.label for e in swept._included[0].extra} == intensified and swept._included[0].seeds == [2]
    assert [e.label for e in swept._included[1].extra] == ["standard SE", "no SE"]  # the fronts once recorded
    pending = 2 * len(labels) + len(intensified) + 2 * 3  # common seeds, the extra seed, the references' fresh ones
    assert f"0 done, 0 running, 0 failed, {pending} pending" in out and "no SE seed 1" in out and "seed 102" in out
    # its report reads the told designs; with nothing re-evaluated it says so rather than print test errors
    assert main(["report", str(path), "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "**6 trials of the re-evaluation have no result yet**" in text  # the references at seeds 100-102


def test_a_latency_limit_rejects_designs_untrained_and_latency_is_an_objective(tmp_path):
    """Latency is known before training (measured alone, cached): over the limit, a design never trains."""
    timed = []

    def latency(d):  # a known latency: fewer channels squeezed (larger r) is faster here
        timed.append(d.label)
        return 10.0 / d.settings["se.reduction"]

    spec = spec_of(random_arm=False, intensify=0, objectives=["final_val_top1_err", "latency_ms"],
                   reference_point={"final_val_top1_err": 30, "latency_ms": 10},
                   constraints={"latency_ms": {"max": 2.0}}, budget={"designs": 6})  # fmt: skip
    fake = Fake()
    found = run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", fake, CPU, latency=latency)["search"]
    assert found.trained == 6 and all(label.startswith(("se.reduction=8,", "se.reduction=16,"))
                                      for label, _ in fake.calls)  # fmt: skip
    assert all(reason.startswith("latency_ms ") for reason in found.infeasible.values()) and found.infeasible
    assert all(v[1] == 10.0 / _settings(label)["se.reduction"] for label, v in found.designs.items())
    with pytest.raises(ValueError, match="needs a latency measurement"):
        run_search(spec, f"sqlite:///{tmp_path / 'other.db'}", fake, CPU)


def test_rungs_promote_only_designs_on_the_rung_front_and_prune_the_rest_untrained_at_full_length(tmp_path):
    calls = []

    def evaluate(designs, seeds):
        calls.extend((d.label, d.settings.get("train.epochs")) for d in designs)
        short = {d.label: 5.0 if "train.epochs" in d.settings else 0.0 for d in designs}  # a rung: worse, same order
        return [{s: {"final_val_top1_err": known_error(d.settings) + short[d.label]} for s in seeds} for d in designs]

    spec = spec_of(random_arm=False, intensify=0, rungs=[1], parallel=4)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    found = run_search(spec, storage, evaluate, CPU)["search"]
    rung = {label.removesuffix(" @ 1 epochs") for label, epochs in calls if epochs == 1}
    full = [label for label, epochs in calls if epochs is None]
    assert rung == set(found.designs) | found.pruned and len(rung) == 12  # every design tried at the rung once
    assert set(full) == set(found.designs) and len(full) == len(set(full))  # only the promoted at full length
    assert found.pruned and not found.pruned & set(found.designs)
    sigmoid = {f"se.reduction={r}, se.excitation=sigmoid" for r in (2, 4, 8, 16)}
    assert sigmoid <= set(found.designs)  # the true front is never pruned: the rung ranks as full length does
    assert all(found.rungs[label][1][0] == found.designs[label][0] + 5 for label in found.designs)
    study = optuna.load_study(study_name="fake", storage=storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len({frozenset(t.params.items()) for t in pruned}) == len(found.pruned)
    assert all("1" in t.user_attrs["rungs"] for t in pruned)
    again = run_search(spec, storage, evaluate, CPU)["search"]  # resumes: nothing trained again
    assert again.pruned == found.pruned and again.rungs == found.rungs and len(calls) == len(rung) + len(full)


def test_confirm_writes_a_grid_of_the_factors_the_fronts_vary_on_seeds_the_search_never_used(tmp_path):
    from ablations.study.searched import confirm_tree

    results = tmp_path / "results"
    results.mkdir()
    spec = spec_of(random_arm=False, intensify=1, reevaluate=[100, 101])
    run_search(spec, f"sqlite:///{results / 'search.db'}", Fake(), CPU)
    tree = confirm_tree(spec, results)
    confirm = parse_spec(tree)
    assert confirm.grid == {"se.reduction": [2, 4, 8, 16]}  # the front: sigmoid at every r
    assert confirm.base["se.excitation"] == "sigmoid" and confirm.seeds == [102, 103, 104, 105, 106]
    assert [e.label for e in confirm.extra] == ["standard SE", "no SE"]
    assert confirm.extra[0].set == {"se.excitation": "sigmoid"}  # the base's own gate, whatever the front fixed
    with pytest.raises(SenetError, match="--confirm: search 'fake' has told no design"):
        confirm_tree(spec, tmp_path / "empty")


def test_a_joining_worker_sees_each_design_at_the_stage_the_controller_trains_it(tmp_path):
    """What `worker NAME` (and a Slurm task) trains of a running search is what the controller evaluates now: a
    design at its rung is not trained at full length meanwhile, nor a front design's extra seed before it is asked
    (the references are known from the start, at their common and fresh seeds)."""
    from ablations.study.searched import searched

    spec = spec_of(random_arm=False, budget={"designs": 3}, parallel=3, rungs=[1], intensify=1, seeds=[0])
    fake, done, calls = Fake(), set(), []

    def evaluate(designs, seeds):
        joined = searched(spec, tmp_path)
        offered = {(e.label, tuple(s.seeds)) for s in [joined, *joined._included] for e in s.extra}
        asked = {(d.label, tuple(seeds)) for d in designs}
        refs = {(r.label, s) for r in spec.search.references for s in [(0,), tuple(spec.search.reevaluate)]}
        assert offered - refs - done == asked, (offered - refs - done, asked)
        done.update(asked)
        calls.append(asked)
        return fake(designs, seeds)

    run_search(spec, f"sqlite:///{tmp_path / 'search.db'}", evaluate, CPU)
    assert len(calls) >= 3  # the rung, full length, the intensification seed
    assert any("@ 1 epochs" in label for label, _ in calls[0]) and any(s == (1,) for _, s in calls[-1])
