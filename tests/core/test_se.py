"""The SE block against the paper's formula (Eq. 2-4) and torchvision's SqueezeExcitation."""

import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from senet_core import SEBlock, SEConfig, SenetError, hidden_width


def _paper_se(x, w1, b1, w2, b2, gate):
    z = x.mean(dim=(2, 3))  # squeeze, Eq. 2
    s = gate(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # excitation, Eq. 3
    return x * s[:, :, None, None]  # scale, Eq. 4


@pytest.mark.parametrize("excitation,gate", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)])
def test_matches_paper_formula(excitation, gate):
    torch.manual_seed(0)
    se = SEBlock(32, reduction=4, excitation=excitation)
    x = torch.randn(3, 32, 5, 6)
    w1, b1 = se.fc1.weight[:, :, 0, 0], se.fc1.bias
    w2, b2 = se.fc2.weight[:, :, 0, 0], se.fc2.bias
    torch.testing.assert_close(se(x), _paper_se(x, w1, b1, w2, b2, gate))


def test_matches_torchvision_with_copied_weights():
    torch.manual_seed(0)
    ours = SEBlock(64, reduction=16)
    ref = SqueezeExcitation(64, 4)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 64, 7, 7)
    torch.testing.assert_close(ours(x), ref(x))


def test_max_squeeze_pools_with_max():
    torch.manual_seed(0)
    se = SEBlock(8, reduction=2, squeeze="max")
    x = torch.randn(2, 8, 4, 4)
    z = x.amax(dim=(2, 3))
    s = torch.sigmoid(torch.relu(z @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias) @ se.fc2.weight[:, :, 0, 0].T
                      + se.fc2.bias)  # fmt: skip
    torch.testing.assert_close(se(x), x * s[:, :, None, None])


def test_no_squeeze_applies_fcs_at_every_position_with_same_params():
    torch.manual_seed(0)
    se = SEBlock(16, reduction=4, squeeze="none")
    avg = SEBlock(16, reduction=4)
    assert sum(p.numel() for p in se.parameters()) == sum(p.numel() for p in avg.parameters())
    x = torch.randn(2, 16, 3, 3)
    gates = se.excite(x)
    assert gates.shape == x.shape  # one gate per position, not per channel
    # Position (1, 2) depends only on the features at (1, 2).
    pos = x[:, :, 1, 2]
    s = torch.sigmoid(torch.relu(pos @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias) @ se.fc2.weight[:, :, 0, 0].T
                      + se.fc2.bias)  # fmt: skip
    torch.testing.assert_close(gates[:, :, 1, 2], s)


def test_bias_off_removes_fc_biases():
    se = SEBlock(64, reduction=16, bias=False)
    assert se.fc1.bias is None and se.fc2.bias is None
    assert sum(p.numel() for p in se.parameters()) == 2 * 64 * 4


@pytest.mark.parametrize(
    "channels,r,rounding,expected",
    [(256, 16, "floor", 16), (16, 16, "floor", 1), (16, 32, "floor", 1), (16, 16, "divisible8", 8),
     (2048, 16, "divisible8", 128), (100, 4, "divisible8", 24), (20, 2, "floor", 10)],
)  # fmt: skip
def test_hidden_width(channels, r, rounding, expected):
    assert hidden_width(channels, r, rounding) == expected


def test_channels_last_gives_same_output_and_layout():
    torch.manual_seed(0)
    se = SEBlock(32, reduction=8)
    x = torch.randn(2, 32, 6, 6)
    y = se(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, se(x))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"reduction": 0}, "se.reduction"), ({"squeeze": "mean"}, "se.squeeze"), ({"excitation": "gelu"}, "se.excitation"),
     ({"placement": "after"}, "se.placement"), ({"rounding": "ceil"}, "se.rounding")],
)  # fmt: skip
def test_bad_options_name_the_field_and_allowed_values(kwargs, field):
    with pytest.raises(SenetError, match=rf"^{field}: .*allowed: "):
        SEConfig(**kwargs)


def test_gate_is_a_submodule_not_a_lambda():
    se = SEBlock(8, reduction=2, excitation="tanh")
    assert isinstance(se.gate, nn.Tanh)
    torch.save(se, __import__("io").BytesIO())  # picklable
