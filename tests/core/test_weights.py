"""Every supported torchvision / timm network, randomly initialised, converted into ours computes the same outputs;
the strict loader names the first key that does not fit; the stem pool is what makes the released SENets match."""

import pytest
import torch
import torchvision
from torch import nn

from senet_core import SenetError, build_model, model_info
from senet_core.stem import imagenet_stem
from senet_core.weights import EXTERNAL, convert, detect_layout, external, load_state

timm = pytest.importorskip("timm")

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def reference(key: str) -> nn.Module:
    """The external network with random weights and BN statistics measured on random images (as training would
    leave them, so every layer's output depends on its input), random BN affine and SE FC biases."""
    e = EXTERNAL[key]
    torch.manual_seed(0)
    net = timm.create_model(e.name, pretrained=False) if e.source == "timm" else getattr(torchvision.models, e.name)()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batch
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:  # the SE FC biases
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        net.train()(torch.randn(8, 3, 64, 64, generator=gen))
    return net.eval()


def ours(model: str, options: dict, state) -> nn.Module:
    with torch.device("meta"):
        net = build_model(model, options)
    load_state(net, state)
    return net.eval()


@torch.no_grad()
@pytest.mark.parametrize("key", sorted(EXTERNAL))
def test_converted_network_computes_what_the_original_computes(key, record_property):
    e = EXTERNAL[key]
    ref = reference(key)
    converted = convert(ref.state_dict())
    expected = ref(X)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the outputs depend on the input
    diff = (ours(e.model, dict(e.options), converted)(X) - expected).abs().max().item()
    record_property("max_abs_diff", diff)
    print(
        f"\n{key}: {e.model} {dict(e.options)} max |difference| {diff:.3g} (outputs up to {expected.abs().max():.2f})"
    )
    assert diff <= 1e-5
    if e.released:  # the Caffe stem pool is what makes them equal: with torchvision's, they differ
        other = ours(e.model, {**e.options, "model.stem_pool": "torchvision"}, converted)(X)
        assert (other - expected).abs().max() > 1e-2


def test_the_table_covers_every_network_the_issue_names():
    tv = {e.name for e in EXTERNAL.values() if e.source == "torchvision"}
    tm = {e.name for e in EXTERNAL.values() if e.source == "timm"}
    assert tv == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"}
    assert {f"seresnet{d}" for d in (18, 34, 50, 101, 152)} <= tm
    assert {"legacy_seresnet50", "legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext50_32x4d",
            "legacy_seresnext101_32x4d", "seresnext50_32x4d", "seresnext101_32x4d"} <= tm  # fmt: skip
    assert {e.name for e in EXTERNAL.values() if e.released} == {n for n in tm if n.startswith("legacy_")}
    for e in EXTERNAL.values():  # every entry names a real configuration of ours
        assert set(e.options) <= set(model_info(e.model).options())


def test_layouts_and_what_they_imply():
    legacy_resnet = convert(timm.create_model("legacy_seresnet50").state_dict())
    legacy_resnext = convert(timm.create_model("legacy_seresnext50_32x4d").state_dict())
    tv = convert(torchvision.models.resnet18().state_dict())
    assert (legacy_resnet.layout, tv.layout) == ("legacy", "torchvision")
    assert legacy_resnet.implied == {"model.stem_pool": "caffe", "model.stride_layout": "original"}
    assert legacy_resnext.implied == {"model.stem_pool": "caffe", "model.stride_layout": "v1.5"}
    assert tv.implied == {"model.stem_pool": "torchvision", "model.stride_layout": "v1.5"}
    assert legacy_resnet.origin["stages.3.2.se.fc2.bias"] == "layer4.2.se_module.fc2.bias"
    assert legacy_resnet.origin["stem.0.weight"] == "layer0.conv1.weight" and "fc.weight" in legacy_resnet.state
    own = build_model("se_resnet20").state_dict()
    assert detect_layout(own) == "senet" and convert(own).implied == {} and convert(own).state.keys() == own.keys()


def _tv18() -> dict:
    return torchvision.models.resnet18().state_dict()


@pytest.mark.parametrize(
    "model,options,edit,message",
    [
        ("resnet18", {}, lambda s: s.pop("layer2.1.bn1.weight"), r"^missing key stages\.1\.1\.bn1\.weight$"),
        ("resnet18", {}, lambda s: s.update({"layer5.0.conv.weight": torch.zeros(1)}),
         r"^unexpected key layer5\.0\.conv\.weight$"),
        ("resnet18", {}, lambda s: s.update({"fc.weight": torch.zeros(10, 512)}),
         r"^shape mismatch at fc\.weight: \(10, 512\) in the weights, \(1000, 512\) in the model; "
         r"set model\.num_classes"),
        ("se_resnet18", {}, lambda s: None,
         r"^missing key stages\.0\.0\.se\.fc1\.weight; the weights have no SE block"),
        ("se_resnet18", {"se.rounding": "divisible8"},
         lambda s: s.update(timm.create_model("seresnet18").state_dict()) or s.pop("layer4.1.se.fc2.bias"),
         r"^missing key stages\.3\.1\.se\.fc2\.bias; set se\.bias=false$"),
    ],
)  # fmt: skip
def test_strict_loading_names_the_first_key_that_does_not_fit(model, options, edit, message):
    state = _tv18()
    edit(state)
    with pytest.raises(SenetError, match=message):
        load_state(build_model(model, options), convert(state))


def test_shape_mismatch_names_both_keys_and_the_se_options():
    state = timm.create_model("seresnet18").state_dict()  # divisible8: 8 hidden units where floor gives 4
    with pytest.raises(SenetError, match=r"^shape mismatch at stages\.0\.0\.se\.fc1\.weight \(layer1\.0\.se\.fc1\."
                       r"weight in the weights\): \(8, 64, 1, 1\) in the weights, \(4, 64, 1, 1\) in the model; check "
                       r"se\.reduction and se\.rounding"):  # fmt: skip
        load_state(build_model("se_resnet18", {"model.stem_pool": "torchvision"}), convert(state))
    with pytest.raises(SenetError, match=r"^unexpected key stages\.0\.0\.se\.fc1\.bias .*; set se\.bias=true$"):
        load_state(build_model("se_resnet18", {"se.bias": False, "se.rounding": "divisible8"}), convert(state))


@torch.no_grad()
def test_checkpoints_without_batch_counters_load():
    """The ports of the released Caffe models were saved before BN counted its batches."""
    ref = reference("timm:legacy_seresnet50")
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    net = build_model("se_resnet50")  # the defaults are the released network's: original layout, Caffe pool
    load_state(net, convert(state))
    torch.testing.assert_close(net.eval()(X), ref(X), rtol=0, atol=1e-5)
    assert int(net.stem[1].num_batches_tracked) == 0


def test_unknown_external_names_list_the_supported_ones():
    assert external("timm:seresnet50.a1_in1k").model == "se_resnet50"  # a pretrained tag names the same network
    with pytest.raises(SenetError, match=r"'timm:legacy_senet154' is not a supported network; allowed: .*seresnet50"):
        external("timm:legacy_senet154")


@pytest.mark.parametrize("size,sides", [(224, (56, 56)), (64, (16, 16)), (225, (57, 56))])
def test_both_stem_pools_give_56_at_224(size, sides):
    x = torch.zeros(1, 3, size, size)
    got = tuple(imagenet_stem(3, 8, pool)(x).shape[-1] for pool in ("torchvision", "caffe"))
    assert got == sides


def test_stem_pool_default_follows_the_stride_layout():
    assert model_info("resnet50").defaults()["model.stem_pool"] == "caffe"
    assert model_info("resnet50").defaults({"model.stride_layout": "v1.5"})["model.stem_pool"] == "torchvision"
    assert model_info("resnext50_32x4d").defaults()["model.stem_pool"] == "torchvision"
    assert model_info("resnet18").defaults()["model.stem_pool"] == "torchvision"
    assert "model.stem_pool" not in model_info("resnet20").defaults()
    pool = build_model("se_resnet50").stem[3]
    assert pool.ceil_mode and pool.padding == 0
    pool = build_model("se_resnet50", {"model.stride_layout": "v1.5"}).stem[3]
    assert not pool.ceil_mode and pool.padding == 1
    with pytest.raises(SenetError, match=r"^model\.stem_pool: 'max' is not allowed; allowed: torchvision, caffe$"):
        build_model("resnet50", {"model.stem_pool": "max"})
    with pytest.raises(SenetError, match=r"^model\.stem_pool: not an option of resnet20"):
        build_model("resnet20", {"model.stem_pool": "caffe"})
