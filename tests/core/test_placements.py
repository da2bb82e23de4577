"""Each SE position sees the tensor the paper says it sees (Tables 13-15)."""

import pytest
import torch

from senet_core import BasicBlock, Bottleneck, SEBlock, SEConfig, build_model, se_blocks


class Spy(SEBlock):
    """An SE block that records its input and acts as the identity, to read the data path."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return x


def _unit(cls, placement, in_ch=16, planes=8, stride=1):
    torch.manual_seed(0)
    unit = cls(in_ch, planes, stride=stride, se=SEConfig(placement=placement, reduction=2), stage=2)
    spy = Spy(unit.se.channels, reduction=2)
    unit.se = spy
    return unit.eval(), spy


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck])
def test_pre_sees_the_unit_input(cls):
    unit, spy = _unit(cls, "pre", in_ch=32 if cls is Bottleneck else 16)
    x = torch.randn(2, unit.se.channels, 6, 6)
    unit(x)
    torch.testing.assert_close(spy.seen, x)


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck])
def test_post_sees_the_post_relu_sum(cls):
    in_ch = 32 if cls is Bottleneck else 8
    unit, spy = _unit(cls, "post", in_ch=in_ch)
    x = torch.randn(2, in_ch, 6, 6)
    out = unit(x)
    expected = torch.relu(unit.residual(x) + unit.shortcut(x))
    torch.testing.assert_close(spy.seen, expected)
    assert (spy.seen >= 0).all()
    torch.testing.assert_close(out, expected)  # the spy scales by one


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck])
def test_identity_sees_the_shortcut(cls):
    unit, spy = _unit(cls, "identity", in_ch=16, stride=2)
    x = torch.randn(2, 16, 6, 6)
    unit(x)
    torch.testing.assert_close(spy.seen, unit.shortcut(x))


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck])
def test_standard_sees_the_residual_branch_before_the_sum(cls):
    unit, spy = _unit(cls, "standard", in_ch=16)
    x = torch.randn(2, 16, 6, 6)
    unit(x)
    torch.testing.assert_close(spy.seen, unit.residual(x))


def test_inner_sits_after_the_3x3_conv_of_the_bottleneck():
    unit, spy = _unit(Bottleneck, "inner", in_ch=32, planes=8)
    assert spy.channels == 8  # the narrow width, not the 32 outputs
    x = torch.randn(2, 32, 6, 6)
    unit(x)
    expected = torch.relu(unit.bn2(unit.conv2(torch.relu(unit.bn1(unit.conv1(x))))))
    torch.testing.assert_close(spy.seen, expected)


def test_inner_in_a_basic_block_sits_after_the_first_conv():
    unit, spy = _unit(BasicBlock, "inner", in_ch=8, planes=8)
    x = torch.randn(2, 8, 6, 6)
    unit(x)
    torch.testing.assert_close(spy.seen, torch.relu(unit.bn1(unit.conv1(x))))


@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity", "inner"])
def test_se_changes_the_output_at_every_placement(placement):
    torch.manual_seed(0)
    se = SEConfig(placement=placement, reduction=2)
    unit = Bottleneck(32, 8, se=se, stage=2).eval()
    base = Bottleneck(32, 8, se=SEConfig(enabled=False), stage=2).eval()
    base.load_state_dict({k: v for k, v in unit.state_dict().items() if not k.startswith("se.")})
    x = torch.randn(2, 32, 5, 5)
    assert not torch.allclose(unit(x), base(x))


def test_stage_selection_and_names():
    model = build_model("se_resnet20", {"se.stages": [3], "se.reduction": 4})
    names = list(se_blocks(model))
    assert names == ["SE_3_1", "SE_3_2", "SE_3_3"]
    full = build_model("se_resnet50")
    names = list(se_blocks(full))
    assert len(names) == 16 and names[0] == "SE_2_1" and "SE_4_6" in names and names[-1] == "SE_5_3"


def test_baseline_and_se_model_share_every_non_se_weight():
    torch.manual_seed(0)
    base = build_model("resnet20")
    se = build_model("se_resnet20", {"se.reduction": 4})
    base_keys = set(base.state_dict())
    se_keys = {k for k in se.state_dict() if ".se." not in k}
    assert base_keys == se_keys
    assert all(base.state_dict()[k].shape == se.state_dict()[k].shape for k in base_keys)


def test_option_a_shortcut_pads_channels_without_parameters():
    unit = BasicBlock(16, 32, stride=2, se=SEConfig(enabled=False), stage=3, shortcut="A")
    x = torch.randn(1, 16, 8, 8)
    y = unit.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert y[:, 16:].abs().sum() == 0
    assert sum(p.numel() for p in unit.shortcut.parameters()) == 0


def test_zero_init_zeroes_the_last_bn_of_every_branch():
    model = build_model("resnet20", {"model.zero_init": True})
    bns = [u.bn2.weight for stage in model.stages for u in stage]
    assert all(w.abs().sum() == 0 for w in bns)
    assert build_model("resnet20").stages[0][0].bn2.weight.abs().sum() > 0
