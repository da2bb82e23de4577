"""Common random numbers (issue 23): initial weights keyed by seed and module name, shared across variants."""

import math

import pytest
import torch
from torch import nn

from senet_core import SEBlock, build_model, init_by_name
from senet_core._init import _generator, stable_names

BACKBONE = {"model.in_channels": 1, "model.num_classes": 10}
VARIANTS = [
    {"se.excitation": "sigmoid"},
    {"se.excitation": "tanh"},
    {"se.excitation": "relu"},
    {"se.reduction": 8},
    *({"se.placement": p} for p in ("pre", "post", "identity", "inner")),
    {"se.stages": [3, 4]},
]


def resnet20(seed, global_seed=None, **options):
    torch.manual_seed(seed if global_seed is None else global_seed)
    model = build_model("resnet20", {**BACKBONE, **options})
    init_by_name(model, seed)
    return model


def shared(a, b):
    """The tensors both state dicts hold under one name with one shape."""
    sa, sb = a.state_dict(), b.state_dict()
    return {k: (sa[k], sb[k]) for k in sa.keys() & sb.keys() if sa[k].shape == sb[k].shape}


def conv_weights(model):
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".se." not in n}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_a_variant_starts_from_its_references_weights_wherever_they_share_a_tensor(variant):
    """Before: the SE layers drew from the global stream and shifted every later draw; 0 of 19 convs agreed."""
    reference = resnet20(0, **{"se.enabled": False})
    model = resnet20(0, **{"se.enabled": True, **variant})
    both = shared(reference, model)
    assert conv_weights(reference) <= both.keys() and len(conv_weights(reference)) == 19
    assert all(torch.equal(a, b) for a, b in both.values())
    sigmoid = resnet20(0, **{"se.enabled": True})
    se = {k: v for k, v in shared(sigmoid, model).items() if ".se." in k}
    assert all(torch.equal(a, b) for a, b in se.values())  # SE blocks of equal shape start equal too
    assert "se.reduction" in variant or any(k.endswith("se.fc1.weight") for k in se)


def test_the_draws_depend_on_the_seed_and_not_on_the_global_stream():
    a, b = resnet20(0, global_seed=5), resnet20(0, global_seed=6)
    assert all(torch.equal(x, y) for x, y in shared(a, b).values())
    c = resnet20(1)
    assert not any(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in conv_weights(a) | {"fc.weight"})


def test_convs_are_kaiming_normal_fan_out_and_linears_pytorchs_default():
    """The same distributions as before: the stage-4 conv's 36,864 weights have std sqrt(2 / fan_out); each module
    draws exactly what torch's own init draws from a generator at the module's key."""
    model = resnet20(0)
    conv = model.stages[2][1].conv2
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03)
    assert conv.weight.mean().abs().item() < 0.05 * math.sqrt(2 / fan_out)
    torch.manual_seed(_generator(0, "stages.2.1.conv2", conv).initial_seed())
    assert torch.equal(conv.weight, nn.init.kaiming_normal_(torch.empty_like(conv.weight), mode="fan_out"))
    fc = model.fc
    expected = nn.Linear(fc.in_features, fc.out_features)
    torch.manual_seed(_generator(0, "fc", fc).initial_seed())
    expected.reset_parameters()
    assert torch.equal(fc.weight, expected.weight) and torch.equal(fc.bias, expected.bias)
    bound = 1 / math.sqrt(fc.in_features)
    assert fc.weight.abs().max() <= bound and fc.bias.abs().max() <= bound


def test_deterministic_tensors_stay_the_constructors():
    """BN ones and zeros, zero conv biases of the SE FCs, and the residual BN gammas `zero_init` zeroes."""
    model = resnet20(0, **{"se.enabled": True, "se.bias": True, "model.zero_init": True})
    unit = model.stages[0][0]
    assert torch.equal(unit.bn2.weight, torch.zeros(16)) and torch.equal(unit.bn1.weight, torch.ones(16))
    assert torch.equal(unit.se.fc1.bias, torch.zeros_like(unit.se.fc1.bias))


def test_an_se_block_inserted_in_a_sequential_does_not_rename_its_siblings():
    """VGG appends its SE blocks into `features`, which renumbers every later layer (features.3 is a conv without
    SE and an SE block with it); the keys count the siblings without SE blocks."""
    with torch.device("meta"):
        plain, se = build_model("vgg16_bn", {"se.enabled": False}), build_model("vgg16_bn", {"se.enabled": True})

    def convs(named):
        return {n for n, m in named if isinstance(m, nn.Conv2d) and ".se." not in n}

    assert len(convs(plain.named_modules()) & convs(se.named_modules())) == 1  # the renaming: only features.0
    assert convs(stable_names(plain)) == convs(stable_names(se)) and len(convs(stable_names(se))) == 13
    assert "features.2.se.fc1" in dict(stable_names(se))

    def tiny(with_se):
        block = [SEBlock(8, reduction=4)] if with_se else []
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), *block, nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 2))

    a, b = tiny(False), tiny(True)
    init_by_name(a, 3), init_by_name(b, 3)
    assert torch.equal(a[2].weight, b[3].weight) and torch.equal(a[4].weight, b[5].weight)


def test_residual_placements_and_mobilenet_keep_the_backbones_names():
    """Every placement hangs its block on the unit as `se`: the backbone's own parameters keep their names."""
    with torch.device("meta"):
        for name, placements in (("resnet20", ("standard", "pre", "post", "identity", "inner")),
                                 ("mobilenet_v1", ("standard",))):  # fmt: skip
            plain = {n for n, _ in build_model(name, {"se.enabled": False}).named_parameters()}
            for placement in placements:
                model = build_model(name, {"se.enabled": True, "se.placement": placement})
                assert [n for n, _ in stable_names(model)] == [n for n, _ in model.named_modules()]
                assert {n for n, _ in model.named_parameters() if ".se." not in n} == plain


def test_a_meta_network_is_left_alone_and_an_unknown_layer_is_refused():
    with torch.device("meta"):
        model = build_model("resnet20", BACKBONE)
    init_by_name(model, 0)  # nothing to draw, and no error
    with pytest.raises(ValueError, match=r"^0 \(LayerNorm\): no keyed initialisation"):
        init_by_name(nn.Sequential(nn.LayerNorm(4)), 0)
