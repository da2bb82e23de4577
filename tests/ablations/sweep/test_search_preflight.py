"""`senet-ablate search NAME --dry-run`: the space, the designs the constraints known before training reject
(untrained), their costs, the trials a budget buys and a time estimate timed on this host; nothing written."""

from __future__ import annotations

import pytest
import yaml

from ablations.cli import main
from ablations.config import Host
from ablations.costs import cost
from ablations.study.search_plan import plan_designs, references
from ablations.study.spec import parse_spec
from ablations.sweep.search_preflight import search_dry_run, train_images
from tests._support.configs import TINY, tiny_config

CPU = Host("cpu")


def search_spec(tmp_path, **search):
    tree = {"name": "budget", "description": "a tiny search", "base": TINY,
            "search": {"space": {"se.reduction": [2, 4, {2: 4, 3: "off"}], "model.name": ["resnet20", "resnet32"]},
                       "objectives": ["final_val_top1_err"], "budget": {"designs": 4}, **search}}  # fmt: skip
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, parse_spec(tree)


def test_constraints_known_before_training_reject_designs_untrained(tmp_path):
    _, spec = search_spec(tmp_path, constraints={"params": {"max": 400_000}})
    designs, sampled = plan_designs(spec, CPU)
    assert not sampled and len(designs) == 6
    # ResNet-32 (464,154 params without SE) breaks the cap with every SE design; ResNet-20 (269,722) never does
    assert [d.feasible for d in designs] == [True, False, True, False, True, False]
    assert designs[1].broken.startswith("params ") and designs[1].broken.endswith(" > 400,000")
    for d in designs:
        assert (d.params, d.gflops) == (cost(d.config).params, cost(d.config).gflops)
    per_stage = designs[4]
    assert per_stage.config.se.reduction == {2: 4, 3: None} and per_stage.label.startswith(
        "se.reduction={2: 4, 3: off}"
    )
    assert [r.label for r in references(spec, CPU)] == ["standard SE", "no SE"]
    assert not references(spec, CPU)[1].config.se.enabled


def test_the_plan_gives_share_costs_trials_and_a_measured_time(tmp_path):
    _, spec = search_spec(tmp_path, constraints={"params": {"max": 400_000}}, seeds=[0, 1, 2], random_arm=False)
    text = search_dry_run(spec, CPU)
    lines = text.splitlines()
    assert lines[0] == "search budget: 6 designs over se.reduction (3), model.name (2); sampler tpe"
    assert lines[1] == "feasible before training: 50% (3 of 6); params ≤ 400,000"
    # 3 feasible designs of the budget's 4, 3 seeds, one arm, and the 2 references at 3 seeds
    assert "budget: 4 designs × 3 seeds × 1 arm(s) + the references = 15 trials, up to 3 more" in text
    time_line = next(line for line in lines if line.startswith("time: about "))
    assert " (8 steps of " in time_line  # 128 training images in batches of 32 (4 steps) for 2 epochs
    assert lines[-1] == "nothing was written (dry run)" and not (tmp_path / "results").exists()


def test_training_images_come_from_the_config():
    assert train_images(tiny_config()) == 128  # 160 synthetic, 32 held out
    assert train_images(tiny_config(data={"train_subset": 50})) == 50
    assert train_images(tiny_config(data={"dataset": "fashion_mnist", "val_size": 5000})) == 55_000
    assert train_images(tiny_config(data={"dataset": "imagefolder", "root": "/x"})) is None


def test_the_cli_plans_and_a_search_only_study_is_no_sweep(tmp_path, capsys):
    path, _ = search_spec(tmp_path)
    assert main(["search", str(path), "--dry-run", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "feasible before training: 100% (6 of 6)" in out and "time: " not in out
    assert main(["sweep", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"senet-ablate: error: {path}: is a search, with no grid to sweep; plan "
                                               f"it with senet-ablate search {path} --dry-run")  # fmt: skip
    assert main(["search", "demo", "--dry-run"]) == 2
    assert "demo: has no search section" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["test_top1_err", "test_loss"])
def test_the_cli_refuses_a_test_objective_in_one_line(tmp_path, capsys, objective):
    path, _ = search_spec(tmp_path)
    tree = yaml.safe_load(path.read_text())
    tree["search"]["objectives"] = [objective]
    path.write_text(yaml.safe_dump(tree))
    assert main(["search", str(path), "--dry-run"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"senet-ablate: error: {path}: search.objectives[0]: '{objective}' is a test metric")


@pytest.mark.parametrize(
    ("extra", "search", "says"),
    [
        (["--detach"], {}, "--detach: not with search (its controller asks each batch once the last is told"),
        ([], {"constraints": {"latency_ms": {"max": 2.0}}}, "search.latency: not with --launcher slurm (the "
         "controller times each design alone on its own device"),
    ],
)  # fmt: skip
def test_a_search_on_slurm_refuses_what_its_controller_cannot_do_in_one_line(tmp_path, capsys, extra, search, says):
    path, _ = search_spec(tmp_path, **search)
    results = tmp_path / "results"
    args = ["search", str(path), "--results", str(results), "--launcher", "slurm", "--total-gpus", "1", *extra]
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"senet-ablate: error: {says}"), line
    assert not results.exists()
