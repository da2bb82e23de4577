"""SE-VGG-16 with batch norm (paper Table 2): an SE block after the non-linearity of every conv layer.

The paper integrates SE into non-residual networks by inserting the block after the non-linearity that
follows each convolution (§3.3), so only the `standard` placement exists here. Stages are VGG's five conv
groups (conv1_x … conv5_x); SE blocks are named SE_<group>_<conv>.
"""

from __future__ import annotations

from torch import nn

from senet_core._init import init_weights
from senet_core._registry import register_model
from senet_core.se import SEBlock, SEConfig

_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
    """Conv groups with 2×2 max-pooling, a 7×7 adaptive pool and the 4096-4096 classifier (Simonyan & Zisserman).

    The adaptive pool (as torchvision) lets the net run on inputs smaller than 224×224.
    """

    def __init__(
        self, groups: tuple[tuple[int, ...], ...], *, se: SEConfig, in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for g, widths in enumerate(groups, start=1):
            for i, width in enumerate(widths, start=1):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                if se.active_in(g):
                    layers.append(SEBlock.from_config(width, se, g).place(g, i))
                channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model(
    "vgg16_bn",
    stages=(1, 2, 3, 4, 5),
    units=tuple((g, len(w), w[0]) for g, w in enumerate(_VGG16, start=1)),
    num_params=138_365_992,
    paper_name="VGG-16",
    placements=("standard",),
)
def vgg16_bn(*, se: SEConfig, in_channels: int = 3, num_classes: int = 1000) -> VGG:
    """VGG-16 with BN after every conv (torchvision's `vgg16_bn` layout and parameter count)."""
    return VGG(_VGG16, se=se, in_channels=in_channels, num_classes=num_classes)
