"""Params and multiply-adds as the paper reports them (§4, Tables 10, 13, 15, 16)."""

import pytest
import torch

from senet_core import build_model, measure, se_param_count


def _gflops(name, **options):
    with torch.device("meta"):
        model = build_model(name, options)
    return measure(model, 224)


@pytest.mark.parametrize(
    "name,options,gflops",
    [
        ("resnet50", {}, 3.86),
        ("se_resnet50", {}, 3.87),
        ("se_resnet50", {"se.squeeze": "none"}, 4.27),
        ("se_resnet50", {"se.placement": "inner"}, 3.86),
        ("se_resnet50", {"se.stages": [2]}, 3.86),
        ("se_resnet50", {"se.stages": [4]}, 3.86),
        ("mobilenet_v1", {}, 0.57),
        ("vgg16_bn", {}, 15.47),
    ],
)
def test_paper_gflops(name, options, gflops):
    assert round(_gflops(name, **options).gflops, 2) == gflops


def test_stride_layout_changes_flops_not_params():
    original, v15 = _gflops("resnet50"), _gflops("resnet50", **{"model.stride_layout": "v1.5"})
    assert original.params == v15.params
    assert round(original.gflops, 3) == 3.858 and round(v15.gflops, 2) == 4.09


def test_se_pool_and_scale_are_counted_exactly():
    c = _gflops("se_resnet50")
    # pool + scale over every SE input: Σ 2·N·C·H·W for the four stages of ResNet-50 at 224².
    expected = 2 * (3 * 256 * 56 * 56 + 4 * 512 * 28 * 28 + 6 * 1024 * 14 * 14 + 3 * 2048 * 7 * 7)
    assert c.se_macs == expected
    # NoSqueeze has no pooling pass, and its two FCs run at every position instead of once.
    ns = _gflops("se_resnet50", **{"se.squeeze": "none"})
    assert ns.se_macs == expected // 2
    stages = [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)]
    fc_once = sum(n * 2 * c * (c // 16) for n, c, _ in stages)
    fc_everywhere = sum(n * 2 * c * (c // 16) * h * h for n, c, h in stages)
    assert ns.macs - c.macs == (fc_everywhere - fc_once) - expected // 2


@pytest.mark.parametrize(
    "options,paper_m",
    [({"se.reduction": 2}, 45.7), ({"se.reduction": 4}, 35.7), ({"se.reduction": 8}, 30.7), ({}, 28.1),
     ({"se.reduction": 32}, 26.9), ({"se.stages": [2]}, 25.6), ({"se.stages": [3]}, 25.7), ({"se.stages": [4]}, 26.4),
     ({"se.placement": "inner"}, 25.8), ({"se.squeeze": "none"}, 28.1)],
)  # fmt: skip
def test_paper_params_within_a_tenth_of_a_million(options, paper_m):
    c = _gflops("se_resnet50", **{"se.bias": False, **options})
    assert abs(round(c.params_m, 1) - paper_m) <= 0.1 + 1e-9


def test_measure_on_a_real_small_model_leaves_it_unchanged():
    torch.manual_seed(0)
    model = build_model("se_resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = measure(model, 32)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert c.params == 269_722 + se_param_count([(3, 16), (3, 32), (3, 64)], 16, bias=True)
    assert 0.04 < c.gflops < 0.05


def test_stem_pool_changes_neither_params_nor_flops():
    """Both max-pools give 56×56 at 224 and have no parameters; pooling is not counted (as in the paper)."""
    caffe = _gflops("se_resnet50", **{"model.stem_pool": "caffe"})
    torchvision = _gflops("se_resnet50", **{"model.stem_pool": "torchvision"})
    assert caffe == torchvision and round(caffe.gflops, 2) == 3.87
