"""Residual units (He et al. 2016) with an SE block at any of the paper's five positions (Tables 13-15).

A baseline unit and its SE unit are the same class; `SEConfig.enabled=False` (or a stage outside
`SEConfig.stages`) only leaves the SE block out. Positions, for a unit y = ReLU(F(x) + S(x)):

- `standard`: y = ReLU(SE(F(x)) + S(x)), on the residual branch before the sum (Fig. 3 of the paper).
- `pre`: y = ReLU(F(SE(x)) + S(x)), SE moved before the residual unit, on its input (Table 14 SE-PRE).
- `post`: y = SE(ReLU(F(x) + S(x))), after the sum and its ReLU (SE-POST).
- `identity`: y = ReLU(F(x) + SE(S(x))), on the identity branch in parallel with F (SE-Identity).
- `inner`: in a bottleneck, right after the 3×3 conv (+BN+ReLU), on the narrow width (Table 15 SE_3×3).
  A basic block has two 3×3 convs; its analogue puts SE after the first one (+BN+ReLU), inside the branch.

Note:
    For SE-PRE the figure of the paper (Fig. 5c) draws the identity from the unit's input before the SE;
    we follow it, so the SE only rescales what the residual branch sees.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from senet_core.se import SEBlock, SEConfig

Shortcut = Literal["A", "B"]
StrideLayout = Literal["original", "v1.5"]


class PadShortcut(nn.Module):
    """He et al.'s option A: subsample by `stride` and zero-pad the new channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


def make_shortcut(in_channels: int, out_channels: int, stride: int, kind: Shortcut) -> nn.Module:
    """Identity when shapes match; else option A (zero-pad) or B (1×1 conv + BN projection)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _Unit(nn.Module):
    """Shared SE wiring of the residual units; subclasses define the branch F in `residual` and `shortcut`."""

    shortcut: nn.Module

    def __init__(self, se: SEConfig, stage: int, *, in_channels: int, inner_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.placement = se.placement if se.active_in(stage) else "none"
        width = {"pre": in_channels, "inner": inner_channels}.get(se.placement, out_channels)
        self.se = SEBlock.from_config(width, se, stage) if self.placement != "none" else None
        self.relu = nn.ReLU(inplace=True)

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(x) if self.se is not None and self.placement == "inner" else x

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that closes the residual branch (zero-initialised with `zero_init`)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se, placement = self.se, self.placement
        if se is None:
            return self.relu(self.residual(x) + self.shortcut(x))
        branch = self.residual(se(x) if placement == "pre" else x)
        if placement == "standard":
            branch = se(branch)
        shortcut = self.shortcut(x)
        if placement == "identity":
            shortcut = se(shortcut)
        out = self.relu(branch + shortcut)
        return se(out) if placement == "post" else out


class BasicBlock(_Unit):
    """Two 3×3 convs (ResNet-18/34 and the CIFAR ResNets); stride on the first conv."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        se: SEConfig,
        stage: int,
        shortcut: Shortcut = "B",
    ) -> None:
        super().__init__(se, stage, in_channels=in_channels, inner_channels=planes, out_channels=planes)
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_channels, planes, stride, shortcut)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self._inner(self.relu(self.bn1(self.conv1(x))))
        return self.bn2(self.conv2(x))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Unit):
    """1×1 → 3×3 → 1×1 (ResNet-50/101/152, ResNeXt, CIFAR ResNet-164), expansion 4.

    `stride_layout="original"` puts the downsampling stride on the first 1×1 conv, as the paper's ResNet-50
    (3.86 GFLOPs); `"v1.5"` puts it on the 3×3 conv, as torchvision and timm do (4.09 GFLOPs, same params).
    ResNeXt uses `groups` (cardinality) and `base_width` (width per group at the first stage).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        se: SEConfig,
        stage: int,
        shortcut: Shortcut = "B",
        stride_layout: StrideLayout = "original",
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        width = int(planes * base_width / 64) * groups
        out = planes * self.expansion
        super().__init__(se, stage, in_channels=in_channels, inner_channels=width, out_channels=out)
        stride1, stride3 = (stride, 1) if stride_layout == "original" else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = make_shortcut(in_channels, out, stride, shortcut)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self._inner(self.relu(self.bn2(self.conv2(x))))
        return self.bn3(self.conv3(x))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3
