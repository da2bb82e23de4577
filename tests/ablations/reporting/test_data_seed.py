"""`vary_data_seed`: a study can tie each trial's data seed to its seed, so its intervals include the variance of
the split and the subsets; the report's levels, references and legend follow."""

import pytest
import yaml

from ablations.errors import SenetError
from ablations.reporting.markdown import _covered
from ablations.reporting.results import gather
from ablations.study.load import load_spec
from ablations.study.spec import SEED_LINKED
from ablations.study.trials import expand
from ablations.sweep.status import statuses
from tests._support.configs import write_spec

EXTRA = [{"label": "no SE", "set": {"se.enabled": False}}]


def _spec(tmp_path, vary, **base):
    path = write_spec(tmp_path, "seeded", extra=EXTRA, seeds=[0, 3], data={"train_subset": 100, **base})
    tree = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**tree, "vary_data_seed": vary}))
    return load_spec(path)


def test_each_trial_gets_its_seed_as_data_seed_and_its_own_key(tmp_path):
    fixed = expand(_spec(tmp_path, False))
    varied = expand(_spec(tmp_path, True))
    assert [t.config.data.data_seed for t in fixed] == [0] * 6
    assert [(t.seed, t.config.data.data_seed) for t in varied] == [(0, 0), (3, 3)] * 3
    assert not {t.key for t in fixed} & {t.key for t in varied}  # never mistaken for the fixed-seed runs
    for t in varied:  # seeds of a level share its hash: the hash of the level with the seed-linked marker
        marked = t.config.model_copy(update={"data": t.config.data.model_copy(update={"data_seed": SEED_LINKED})})
        assert t.config_hash == marked.config_hash() and t.key == f"{t.config_hash}-s{t.seed}"
    assert len({t.config_hash for t in varied}) == 3


def test_the_data_seed_cannot_be_set_twice(tmp_path):
    with pytest.raises(SenetError, match="vary_data_seed: the seed sets data.data_seed"):
        _spec(tmp_path, True, data_seed=5)
    with pytest.raises(SenetError, match="--set data.data_seed: study 'seeded' varies this key"):
        expand(_spec(tmp_path, True), {"data.data_seed": 2})
    assert expand(_spec(tmp_path, False), {"data.data_seed": 2})[0].config.data.data_seed == 2


def test_report_levels_pair_the_seeds_and_say_what_the_intervals_cover(tmp_path):
    spec = _spec(tmp_path, True)
    (factor,) = gather(spec, statuses(expand(spec), [], 1), [], tracker=None)  # no runs: no history is read
    assert [lv.label for lv in factor.levels] == ["sigmoid", "tanh", "no SE"]
    assert [[c.trial.seed for c in lv.cells] for lv in factor.levels] == [[0, 3]] * 3
    sigmoid, tanh, no_se = factor.levels
    assert tanh.reference is sigmoid and no_se.reference is sigmoid and tanh.baseline is no_se
    assert sigmoid.config.data.data_seed == SEED_LINKED
    assert _covered(spec).startswith("seed and data-split variance")
    assert _covered(_spec(tmp_path, False)).startswith("seed variance only")
