"""A run's overrides that reshape its study: a factor's levels replaced or added, the reference named, the seeds
given; expanded into trials without training anything."""

from __future__ import annotations

import pytest

from ablations.errors import SenetError
from ablations.study.load import load_spec
from ablations.study.overrides import reshape
from ablations.study.trials import expand
from tests._support.configs import write_spec


def _tiny(tmp_path, **kwargs):  # the gate (sigmoid, tanh) x 2 seeds of the tiny configuration, and the no-SE extra
    return load_spec(write_spec(tmp_path, extra=[{"label": "no SE", "set": {"se.enabled": False}}], **kwargs))


def _levels(trials, key):
    return sorted({str(t.factors.get(key)) for t in trials})


def test_levels_replace_a_factors_levels_and_keep_the_identity_of_a_level_kept(tmp_path):
    spec = _tiny(tmp_path)
    before = {t.label: t.key for t in expand(spec)}
    trials = expand(spec, {"levels:se.excitation": ["sigmoid", "relu"]})
    assert sorted({t.label for t in trials}) == ["no SE", "se.excitation=relu", "se.excitation=sigmoid"]
    assert len(trials) == 3 * 2
    kept = {t.label: t.key for t in trials}
    assert kept["se.excitation=sigmoid"] == before["se.excitation=sigmoid"]  # its results are found again
    assert spec.grid == {"se.excitation": ["sigmoid", "tanh"]}  # the loaded spec is left as it was


def test_levels_of_a_new_factor_cross_the_grid_and_leave_the_extras_as_they_are(tmp_path):
    trials = expand(_tiny(tmp_path), {"levels:se.reduction": [4, 16]})
    grid = [t for t in trials if "extra" not in t.factors]
    assert sorted({(t.factors["se.excitation"], t.factors["se.reduction"]) for t in grid}) == [
        ("sigmoid", 4), ("sigmoid", 16), ("tanh", 4), ("tanh", 16)]  # fmt: skip
    assert {t.config.se.reduction for t in grid} == {4, 16}
    assert [t.label for t in trials if "extra" in t.factors] == ["no SE", "no SE"]
    assert len(trials) == (4 + 1) * 2


def test_a_list_level_is_one_level_and_seeds_come_from_the_run(tmp_path):
    trials = expand(_tiny(tmp_path), {"levels:se.stages": [[2], [2, 3], None], "seeds": 3})
    assert {t.seed for t in trials} == {0, 1, 2}
    assert sorted({str(t.config.se.stages) for t in trials if t.config.se.enabled}) == ["None", "[2, 3]", "[2]"]
    assert len(trials) == (2 * 3 + 1) * 3
    assert {t.seed for t in expand(_tiny(tmp_path), {"seeds": [0, 4]})} == {0, 4}


def test_the_reference_must_be_among_the_levels_or_be_named(tmp_path):
    spec = _tiny(tmp_path)
    with pytest.raises(SenetError) as err:
        expand(spec, {"levels:se.reduction": [4, 8]})
    assert str(err.value) == (
        "se.reduction=4,8: the reference of study 'tiny' is se.reduction=16, not among these levels; add it "
        "(se.reduction=4,8,16) or name one of them as the reference (reference.se.reduction=4)"
    )
    named = {"levels:se.reduction": [4, 8], "reference:se.reduction": 8}
    shaped = reshape(spec, named)
    assert shaped.reference["se.reduction"] == 8
    refs = {t.label for t in expand(spec, named) if shaped.is_reference(t.config)}
    assert refs == {"se.excitation=sigmoid, se.reduction=8"}


def test_levels_of_a_factor_an_included_study_varies_go_to_that_study(tmp_path):
    paper = load_spec("paper")  # includes reduction_ratio, the only one whose grid has se.reduction
    shaped = reshape(paper, {"levels:se.reduction": [8, 16]})
    grids = {s.name: s.grid for s in [shaped, *shaped._included]}
    assert grids["reduction_ratio"] == {"se.reduction": [8, 16]}
    assert grids["squeeze"] == load_spec("squeeze").grid and grids["paper"] == {}


def test_reshaping_again_changes_nothing(tmp_path):
    spec = _tiny(tmp_path)
    overrides = {"levels:se.reduction": [4, 16], "seeds": 1, "train.epochs": 1}
    once = reshape(spec, overrides)
    assert reshape(once, overrides).model_dump() == once.model_dump()
    assert [t.key for t in expand(once, overrides)] == [t.key for t in expand(spec, overrides)]
    assert reshape(spec, {"train.epochs": 1}) is spec  # config values alone leave the study as it is


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"levels:se.reduction": [4, "x"]},
            "se.reduction=4,x (level 2): 'x' is not allowed; allowed: an integer >= 1, or a map",
        ),
        ({"levels:se.reduction": [4, 4]}, "se.reduction=4,4: 4 is given twice; give each level once"),
        ({"levels:se.reducton": [4, 16]}, "se.reducton=4,16: unknown key; allowed in se: enabled, reduction"),
        ({"levels:se.reduction": [4, 16], "se.reduction": 8}, "se.reduction: given as one value and as levels"),
        ({"reference:se.excitation": "gelu"}, "reference.se.excitation: 'gelu' is not allowed; allowed: 'sigmoid'"),
        ({"seeds": 0}, "seeds: 0 is not allowed; allowed: a count 1..10000"),
    ],
)
def test_bad_reshaping_overrides_are_one_line(tmp_path, overrides, message):
    with pytest.raises(SenetError) as err:
        expand(_tiny(tmp_path), overrides)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
