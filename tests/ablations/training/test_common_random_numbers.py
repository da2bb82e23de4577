"""Common random numbers (issue 23): the engine starts a trial's variants from one set of weights at a seed."""

import pytest
import torch

from ablations.config import build_config
from ablations.training.engine import _setup
from tests._support.configs import tiny_tree

VARIANTS = [
    {"excitation": "sigmoid"},
    {"excitation": "tanh"},
    {"excitation": "relu"},
    {"reduction": 8},
    {"placement": "post"},
    {"stages": [2, 3]},
]


def setup(seed=0, **se):
    """The trial's model and the global generator's state as the engine leaves them before the first step."""
    run = _setup(build_config({**tiny_tree(se=se), "seed": seed}).resolved(), None)
    return run.model.state_dict(), torch.get_rng_state()


@pytest.fixture(scope="module")
def reference():
    return setup(enabled=False)


@pytest.mark.parametrize("se", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_every_tensor_a_variant_shares_with_no_se_starts_equal(reference, se):
    (plain, plain_rng), (model, rng) = reference, setup(**se)
    both = [k for k in plain.keys() & model.keys() if plain[k].shape == model[k].shape]
    convs = [k for k in both if k.endswith(".weight") and plain[k].dim() == 4]
    assert len(convs) == 19 and "fc.weight" in both  # ResNet-20's 19 convs and the classifier
    assert all(torch.equal(plain[k], model[k]) for k in both)
    assert torch.equal(plain_rng, rng)  # the global stream (dropout) starts where the reference's does


def test_another_seed_draws_other_weights_and_one_seed_the_same_ones(reference):
    (plain, _), (again, _), (other, _) = reference, setup(enabled=False), setup(seed=1, enabled=False)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert not torch.equal(plain["stem.0.weight"], other["stem.0.weight"])
    assert not torch.equal(plain["fc.weight"], other["fc.weight"])
