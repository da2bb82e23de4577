"""Parameter and multiply-add counts as the paper reports them (Tables 2-3, 10, 13, 15, 16).

GFLOPs in the paper are multiply-adds of one forward pass. Convolutions and linear layers are counted by
`torch.utils.flop_counter` (which reports 2 FLOPs per multiply-add); the SE block's global pooling and channel
scaling are elementwise passes that counter does not see, so each SE block adds C·H·W for the pooling (none for
NoSqueeze) and C·H·W for the scaling. BN, ReLU and the residual sums are not counted, as in the paper: ResNet-50
gives 3.86 G and SE-ResNet-50 3.87 G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from senet_core.se import SEBlock


@dataclass(frozen=True)
class Complexity:
    """Cost of one model at one input size.

    Attributes:
        params: trainable parameters.
        macs: multiply-adds of one forward pass of one image.
        se_macs: the part of `macs` spent in SE pooling and scaling (already included in `macs`).
    """

    params: int
    macs: int
    se_macs: int

    @property
    def gflops(self) -> float:
        """The paper's GFLOPs: multiply-adds in units of 1e9."""
        return self.macs / 1e9

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure(model: nn.Module, input_size: int = 224, in_channels: int = 3) -> Complexity:
    """Params and multiply-adds of `model` for one `in_channels`×`input_size`×`input_size` image, on the CPU.

    The forward pass runs on meta tensors when the model allows it, so ImageNet-size nets cost no memory.
    """
    se_macs = 0

    def count_se(module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal se_macs
        height, width = args[0].shape[-2:]
        se_macs += module.pool_and_scale_macs(int(height), int(width))  # type: ignore[operator]

    was_training = model.training
    model.eval()
    hooks = [m.register_forward_hook(count_se) for m in model.modules() if isinstance(m, SEBlock)]
    try:
        device = next(model.parameters()).device
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Complexity(count_params(model), counter.get_total_flops() // 2 + se_macs, se_macs)
