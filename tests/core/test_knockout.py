"""Fixing SE gates of a trained network: gates of 1 give exactly the network without those SE blocks; a fixed
per-channel gate rescales by it; nothing changes once the override is closed."""

import pytest
import torch

from senet_core import GateOverride, build_model, se_blocks
from tests._support.networks import trained_like


def _trained_like(**options):
    """SE-ResNet-20 at r = 4 with random BN statistics and gates well away from 1, so a knock-out shows."""
    return trained_like("se_resnet20", **{"se.reduction": 4, **options})


def _without_se(model, name: str, **options):
    """The same weights in the network built without the SE blocks that `options` leaves out."""
    other = build_model(name, {**({"se.reduction": 4} if name.startswith("se_") else {}), **options}).eval()
    kept = other.state_dict().keys()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in kept})
    return other


@torch.no_grad()
def test_gates_of_one_everywhere_give_the_network_without_se():
    model, x = _trained_like(), torch.randn(4, 3, 32, 32)
    plain = _without_se(model, "resnet20")
    with GateOverride(model, dict.fromkeys(se_blocks(model), 1.0)):
        knocked = model(x)
    torch.testing.assert_close(knocked, plain(x), rtol=0, atol=1e-6)
    assert (model(x) - plain(x)).abs().max() > 1e-2  # the SE blocks mattered before


@torch.no_grad()
def test_knocking_out_one_stage_gives_se_in_the_other_stages():
    model, x = _trained_like(), torch.randn(4, 3, 32, 32)
    stage3 = [n for n, b in se_blocks(model).items() if b.stage == 3]
    assert stage3 == ["SE_3_1", "SE_3_2", "SE_3_3"]
    with GateOverride(model, dict.fromkeys(stage3, 1.0)):
        knocked = model(x)
    torch.testing.assert_close(knocked, _without_se(model, "se_resnet20", **{"se.stages": [2, 4]})(x), rtol=0, atol=0)


@torch.no_grad()
def test_a_fixed_per_channel_gate_rescales_by_it_and_the_hooks_go_away():
    model, x = _trained_like(), torch.randn(2, 3, 32, 32)
    block = se_blocks(model)["SE_4_2"]
    value = torch.linspace(0.1, 0.9, block.channels)
    seen = {}
    handle = block.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    before = model(x)
    with GateOverride(model, {"SE_4_2": value}):
        model(x)
    torch.testing.assert_close(seen["out"], seen["x"] * value.view(1, -1, 1, 1))
    handle.remove()
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_no_squeeze_gates_are_replaced_at_every_position():
    model, x = _trained_like(**{"se.squeeze": "none"}), torch.randn(2, 3, 32, 32)
    with torch.no_grad(), GateOverride(model, dict.fromkeys(se_blocks(model), 1.0)):
        knocked = model(x)
    torch.testing.assert_close(knocked, _without_se(model, "resnet20")(x), rtol=0, atol=1e-6)


def test_bad_names_and_shapes():
    model = _trained_like()
    with pytest.raises(KeyError, match="SE_9_9 is not an SE block.*SE_2_1"):
        GateOverride(model, {"SE_9_9": 1.0})
    with pytest.raises(ValueError, match=r"SE_2_1: \(3,\) gate values for 16 channels"):
        GateOverride(model, {"SE_2_1": torch.ones(3)})
