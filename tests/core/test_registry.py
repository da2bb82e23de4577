"""Every registered backbone: builds, runs forward and backward, and has exactly the documented parameters."""

import re

import pytest
import torch

from senet_core import (
    SE_OFF,
    SenetError,
    build_model,
    count_params,
    list_models,
    model_info,
    resolve,
    se_blocks,
    se_param_count,
)
from senet_core._registry import register_model

SMALL = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164"]
IMAGENET = [m for m in list_models() if m not in SMALL]


@pytest.mark.parametrize("name", list_models())
def test_baseline_params_equal_the_registry_metadata(name):
    with torch.device("meta"):
        model = build_model(name)
    assert count_params(model) == model_info(name).num_params


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("bias", [False, True])
def test_se_params_equal_eq5(name, bias):
    info = model_info(name)
    with torch.device("meta"):
        model = build_model(f"se_{name}", {"se.bias": bias, "se.reduction": 4})
    # Eq. 5 is weights-only; the first unit of a stage has the stage's width for the standard placement.
    expected = se_param_count([(n, c) for _stage, n, c in info.units], 4, bias=bias)
    assert count_params(model) - info.num_params == expected


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_finite(name):
    torch.manual_seed(0)
    size = 32 if name in SMALL else 64
    model = build_model(f"se_{name}", {"model.num_classes": 5, "model.in_channels": 1, "se.reduction": 4})
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    se_grad = next(p.grad for n, p in model.named_parameters() if ".fc1." in n or "se.fc1" in n)
    assert se_grad.abs().sum() > 0  # the SE blocks are in the graph


def test_timm_exact_counts():
    with torch.device("meta"):
        assert count_params(build_model("se_resnet50")) == 28_088_024
        assert count_params(build_model("se_resnet50", {"se.bias": False})) == 28_071_976
        assert count_params(build_model("se_resnet101")) == 49_326_872
        assert count_params(build_model("se_resnet152")) == 66_821_848
        assert count_params(build_model("se_resnext50_32x4d")) == 27_559_896


def test_cifar_counts_from_the_reference():
    assert model_info("resnet20").num_params == 269_722
    assert model_info("resnet56").num_params == 853_018
    assert model_info("resnet110").num_params == 1_727_962


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet50", stages=(2,), units=(), num_params=0, paper_name="x")(lambda **_: None)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("resnet999", {}, r"^model: 'resnet999' is not a known model; allowed: .*resnet50"),
        ("se_resnet50", {"se.reduction": 0}, r"^se.reduction: .*integer >= 1"),
        ("se_resnet50", {"se.stages": [6]}, r"^se.stages: stage 6 does not exist in resnet50; allowed: 2, 3, 4, 5"),
        ("se_resnet20", {"se.stages": [5]}, r"allowed: 2, 3, 4$"),
        (
            "se_vgg16_bn",
            {"se.placement": "pre"},
            r"^se.placement: 'pre' is not allowed for vgg16_bn; allowed: standard",
        ),
        ("resnet50", {"model.shortcut": "A"}, r"^model.shortcut: not an option of resnet50; allowed: "),
        ("resnet20", {"model.stride_layout": "v1.5"}, r"^model.stride_layout: not an option of resnet20"),
        (
            "resnet50",
            {"model.stride_layout": "v2"},
            r"^model.stride_layout: 'v2' is not allowed; allowed: original, v1.5",
        ),
        ("resnet20", {"model.shortcut": "C"}, r"allowed: A, B"),
        ("resnet20", {"model.num_classes": 0}, r"^model.num_classes: 0 .*integer >= 1"),
        ("resnet20", {"se.reduction": 8}, r"^se.reduction: SE is off in resnet20"),
        ("resnet20", {"model.depth": 8}, r"^model.depth: not an option"),
    ],
)
def test_bad_options_raise_one_clear_error(name, options, match):
    with pytest.raises(SenetError, match=match):
        build_model(name, options)


def test_equal_networks_resolve_equally():
    a = build_model("se_resnet20", {"se.stages": [2, 3, 4], "se.reduction": 4})
    b = build_model("resnet20", {"se.enabled": True, "se.reduction": 4})
    assert a.state_dict().keys() == b.state_dict().keys()
    c = build_model("se_resnet20", {"se.stages": []})
    assert count_params(c) == model_info("resnet20").num_params


def test_keyword_spelling():
    model = build_model("se_resnet20", se__reduction=8, model__num_classes=3)
    assert model.fc.out_features == 3
    assert model.stages[0][0].se.fc1.out_channels == 2


def test_a_per_stage_reduction_builds_each_stage_at_its_own_r():
    """`se.reduction` as a map stage -> r or off: stage 2 at r = 4 (16 // 4 = 4 hidden units), stage 3 at r = 8
    (32 // 8 = 4), no SE in stage 4; the params are the backbone's plus Eq. 5 per stage."""
    model = build_model("se_resnet20", {"se.reduction": {2: 4, 3: 8, 4: "off"}})
    hidden = {name: (block.channels, block.fc1.out_channels) for name, block in se_blocks(model).items()}
    assert hidden == {f"SE_{s}_{i}": (c, h) for s, c, h in ((2, 16, 4), (3, 32, 4)) for i in (1, 2, 3)}
    extra = se_param_count([(3, 16)], 4, bias=True) + se_param_count([(3, 32)], 8, bias=True)
    assert count_params(model) == model_info("resnet20").num_params + extra


@pytest.mark.parametrize(
    ("reduction", "stages", "spelled"),
    [
        ({2: 16, 3: 16, 4: 16}, None, (16, None)),  # one r everywhere is that r
        ({2: 8, 3: None}, None, (8, (2,))),  # one r on some stages: that r on those stages; a missing stage is off
        ({2: 8, 3: False, 4: 16}, None, (((2, 8), (4, 16)), None)),  # an off stage drops its r
        ({2: 8, 3: 4, 4: 16}, [2, 4], (((2, 8), (4, 16)), None)),  # se.stages still leaves stages out
        ({2: "off", 3: "off", 4: "off"}, None, None),  # no stage: no SE at all
    ],
)
def test_equal_per_stage_networks_are_spelled_one_way(reduction, stages, spelled):
    _, se, _ = resolve("se_resnet20", {"se.reduction": reduction, "se.stages": stages})
    assert (se.reduction, se.stages) == spelled if spelled else se == SE_OFF


@pytest.mark.parametrize(
    ("reduction", "message"),
    [
        ({7: 8}, "se.reduction: stage 7 does not exist in resnet20; allowed: 2, 3, 4"),
        ({2: 0}, "se.reduction: stage 2: 0 is not allowed; allowed: an integer >= 1 or off"),
        ({2: "on"}, "se.reduction: stage 2: 'on' is not allowed; allowed: an integer >= 1 or off"),
        ({"two": 8}, "se.reduction: stage 'two' is not a stage number"),
        (0, "se.reduction: 0 is not allowed; allowed: an integer >= 1, or a map stage -> integer >= 1 or off"),
        (True, "se.reduction: True is not allowed"),
    ],
)
def test_bad_per_stage_reductions_name_the_stage(reduction, message):
    with pytest.raises(SenetError, match=re.escape(message)):
        resolve("se_resnet20", {"se.reduction": reduction})
