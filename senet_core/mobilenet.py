"""SE-MobileNet (v1, Howard et al. 2017; paper Table 3): SE after each depthwise-separable unit.

Each unit is a 3×3 depthwise conv and a 1×1 pointwise conv, each followed by BN and ReLU; the SE block
recalibrates the pointwise output, so only the `standard` placement exists. Stages group units by output
resolution at 224×224 (stage 1: the stem and the first unit at 112; stages 2-5 at 56, 28, 14, 7), and blocks are
named SE_<stage>_<unit>. With r=16 the SE adds 0.48M parameters (4.23M → 4.71M; the paper: 4.2M → 4.7M).
"""

from __future__ import annotations

import torch
from torch import nn

from senet_core._init import init_weights
from senet_core._registry import register_model
from senet_core.se import SEBlock, SEConfig

# (output width, stride) per depthwise-separable unit, grouped by stage.
_MOBILENET = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SeparableUnit(nn.Module):
    """Depthwise 3×3 + BN + ReLU, pointwise 1×1 + BN + ReLU, then the SE block when active."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: SEConfig, stage: int, index: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
            *_conv_bn(in_channels, out_channels, 1, 1),
        )
        self.se = SEBlock.from_config(out_channels, se, stage).place(stage, index) if se.active_in(stage) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return self.se(x) if self.se is not None else x


class MobileNet(nn.Module):
    """MobileNet v1 at width multiplier 1.0: a 3×3/2 stem of 32 channels, 13 separable units, pool, linear."""

    def __init__(self, *, se: SEConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, 32, 3, 2))
        units: list[nn.Module] = []
        channels = 32
        for stage, spec in enumerate(_MOBILENET, start=1):
            for i, (width, stride) in enumerate(spec, start=1):
                units.append(SeparableUnit(channels, width, stride, se, stage, i))
                channels = width
        self.units = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.units(self.stem(x))).flatten(1))


@register_model(
    "mobilenet_v1",
    stages=(1, 2, 3, 4, 5),
    units=tuple((s, len(spec), spec[0][0]) for s, spec in enumerate(_MOBILENET, start=1)),
    num_params=4_231_976,
    paper_name="MobileNet",
    placements=("standard",),
)
def mobilenet_v1(*, se: SEConfig, in_channels: int = 3, num_classes: int = 1000) -> MobileNet:
    """MobileNet v1 1.0-224 (4.23M parameters, 569M multiply-adds)."""
    return MobileNet(se=se, in_channels=in_channels, num_classes=num_classes)
