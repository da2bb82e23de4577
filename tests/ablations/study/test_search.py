"""The `search:` section of a study spec: a categorical space, objectives on validation metrics only, costs as
constraints, and every mistake one line naming the field and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from ablations.errors import SenetError
from ablations.study.search import OBJECTIVES, design_label
from ablations.study.spec import parse_spec

SEARCH = """
name: budget
description: which SE design is best for a parameter budget
base: {model.name: resnet20}
search:
  space:
    se.reduction: [4, 8, 16, {2: 4, 3: 8, 4: off}]
    se.excitation: [sigmoid, tanh]
    model.name: [resnet20, resnet32]
  objectives: [final_val_top1_err, params]
  reference_point: {final_val_top1_err: 20, params: 600000}
  constraints: {params: {max: 480000}}
  budget: {designs: 12}
"""


def spec_with(**search):
    tree = yaml.safe_load(SEARCH)
    tree["search"].update(search)
    return parse_spec(tree)


def error_of(**search) -> str:
    with pytest.raises(SenetError) as err:
        spec_with(**search)
    return str(err.value)


def test_a_search_section_parses_with_its_defaults():
    s = parse_spec(yaml.safe_load(SEARCH)).search
    assert s is not None and s.size() == 16 and len(list(s.designs())) == 16
    assert s.sampler == "tpe" and s.random_arm and s.seeds == [0, 1] and s.reevaluate == [100, 101, 102]
    assert [r.label for r in s.references] == ["standard SE", "no SE"] and s.references[1].set == {"se.enabled": False}
    assert s.constraints["params"].max == 480_000 and s.budget.designs == 12 and s.budget.gpu_hours is None
    fourth = list(s.designs())[12]  # the levels crossed in the order written: the 4th r, the first gate and net
    assert design_label(fourth) == "se.reduction={2: 4, 3: 8, 4: off}, se.excitation=sigmoid, model.name=resnet20"


@pytest.mark.parametrize("name", ["test_top1_err", "test_loss", "Test_top5_err", "my_test_metric"])
def test_a_test_metric_is_refused_whatever_its_name(name):
    assert error_of(objectives=[name]) == (
        f"search.objectives[0]: {name!r} is a test metric: searching on it selects on the test set (the "
        f"re-evaluation reads test error); allowed: {', '.join(OBJECTIVES)}"
    )


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"objectives": ["best_val_top1_err"]}, "search.objectives[0]: 'best_val_top1_err' is not an objective"),
        ({"objectives": ["params"]}, "search.objectives: ['params'] has no validation metric"),
        ({"objectives": ["final_val_loss", "final_val_loss"]}, "search.objectives[1]: 'final_val_loss' is given twice"),
        ({"objectives": ["final_val_top1_err", "gflops"]}, "search.reference_point: give gflops too"),
        ({"objectives": ["final_val_top1_err"]}, "search.reference_point.params: not an objective"),
        ({"objectives": ["final_val_loss", "params", "gflops"]}, "search.objectives: List should have at most 2 items"),
        ({"constraints": {"memory": {"max": 3}}}, "search.constraints.memory: not a cost; allowed: params, gflops"),
        ({"constraints": {"params": {"max": 0}}}, "search.constraints.params.max: Input should be greater than 0"),
        ({"space": {"se.reductio": [4]}}, "search.space.se.reductio: unknown key; allowed in se: enabled"),
        ({"space": {"se.reduction": [4, 0]}}, "search.space.se.reduction[1]: 0 is not allowed; allowed: an integer"),
        ({"space": {"se.reduction": [4, 4]}}, "search.space.se.reduction[1]: 4 repeats level 0"),
        ({"space": {"data.data_seed": [0, 1]}}, "search.space.data.data_seed: the data seed is not a design choice"),
        ({"space": {"se.excitation": "tanh"}}, "search.space.se.excitation: must be a non-empty list of levels"),
        ({"space": {}}, "search.space: give at least one config key and its levels"),
        ({"reevaluate": [1, 2]}, "search.reevaluate: seed 1 is also a search seed"),
        ({"rungs": [3, 1]}, "search.rungs: [3, 1] is not allowed; allowed: increasing epoch counts >= 1"),
        ({"sampler": "cmaes"}, "search.sampler: Input should be 'tpe', 'gp', 'nsga2' or 'random'"),
        ({"budget": {"designs": 0}}, "search.budget.designs: Input should be greater than or equal to 1"),
        ({"budget": {"designs": 5, "hours": 2}}, "search.budget.hours: unknown key; allowed: designs, gpu_hours"),
        ({"colour": "red"}, "search.colour: unknown key; allowed: space, objectives, constraints, sampler"),
        ({"references": [{"label": "r8", "set": {"se.reduction": -1}}]}, "search.references[0].set.se.reduction: -1"),
        ({"seeds": [0, 0]}, "search.seeds[1]: seed 0 is listed twice"),
    ],
)
def test_each_mistake_is_one_line_naming_the_field(search, message):
    assert message in error_of(**search)


def test_a_study_may_be_a_search_alone_and_a_space_may_be_too_large():
    assert parse_spec(yaml.safe_load(SEARCH)).grid == {}
    levels = {f"se.{k}": v for k, v in {"reduction": list(range(1, 101)), "excitation": ["sigmoid", "tanh", "relu"],
                                        "squeeze": ["avg", "max", "none"]}.items()}  # fmt: skip
    levels["model.name"] = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"] * 1
    levels["train.lr"] = [0.01 * i for i in range(1, 30)]
    assert "search.space: 130500 designs; allowed: at most 100000" in error_of(space=levels)
