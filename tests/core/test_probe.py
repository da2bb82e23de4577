"""The excitation probe reads gate values by paper name without changing the model."""

import pytest
import torch

from senet_core import ExcitationProbe, build_model


def test_probe_reads_every_block_without_changing_outputs():
    torch.manual_seed(0)
    model = build_model("se_resnet20", {"se.reduction": 4}).eval()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    with ExcitationProbe(model) as probe:
        during = model(x)
    after = model(x)
    torch.testing.assert_close(before, during)
    torch.testing.assert_close(before, after)
    values = probe.values()
    assert list(values)[:2] == ["SE_2_1", "SE_2_2"] and len(values) == 9
    assert values["SE_4_3"].shape == (4, 64)
    assert ((values["SE_2_1"] > 0) & (values["SE_2_1"] < 1)).all()  # sigmoid gates


def test_probe_values_equal_the_gate():
    torch.manual_seed(0)
    model = build_model("se_resnet20", {"se.reduction": 4}).eval()
    x = torch.randn(2, 3, 32, 32)
    block = model.stages[2][2].se
    seen = {}
    block.register_forward_hook(lambda m, a, o: seen.setdefault("in", a[0]))
    with ExcitationProbe(model, ["SE_4_3"]) as probe:
        model(x)
    torch.testing.assert_close(probe.values()["SE_4_3"], block.excite(seen["in"])[:, :, 0, 0])
    assert list(probe.values()) == ["SE_4_3"]


def test_probe_detaches_its_hooks():
    model = build_model("se_resnet20")
    with ExcitationProbe(model) as probe:
        pass
    model(torch.randn(1, 3, 32, 32))
    assert probe.values() == {}
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_block_name_lists_the_blocks():
    with pytest.raises(KeyError, match="SE_9_9 is not an SE block.*SE_2_1"):
        ExcitationProbe(build_model("se_resnet20"), ["SE_9_9"])


def test_no_squeeze_probe_gives_one_value_per_channel():
    model = build_model("se_resnet20", {"se.squeeze": "none", "se.reduction": 4}).eval()
    with ExcitationProbe(model, ["SE_2_1"]) as probe:
        model(torch.randn(3, 3, 32, 32))
    assert probe.values()["SE_2_1"].shape == (3, 16)
