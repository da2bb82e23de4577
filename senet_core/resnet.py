"""ResNets of He et al. for ImageNet (ResNet-18…152, ResNeXt) and CIFAR (6n+2 basic, ResNet-164).

Stage numbering follows the paper (Table 1): stage 1 is the stem, ImageNet nets have residual stages 2-5
(conv2_x … conv5_x), CIFAR nets 2-4. The SE blocks are named SE_<stage>_<unit> (SE_4_6 is the sixth unit of
stage 4), the names the excitation probe reports.
"""

from __future__ import annotations

from torch import nn

from senet_core._registry import register_model
from senet_core.se import SEConfig
from senet_core.units import BasicBlock, Bottleneck, Shortcut, StrideLayout, _Unit

ALL_PLACEMENTS = ("standard", "pre", "post", "identity", "inner")


class ResNet(nn.Module):
    """A stem, residual stages, global average pooling and a linear classifier.

    Args:
        block: unit class, `BasicBlock` or `Bottleneck`.
        layers: units per residual stage.
        widths: `planes` per stage (the unit's output is `planes * block.expansion`).
        se: where and what SE blocks to add.
        stem: `imagenet` (7×7/2 conv + 3×3/2 max-pool, 64 channels) or `cifar` (3×3 conv, `widths[0]` channels).
        in_channels: input image channels (1 for Fashion-MNIST).
        num_classes: classifier outputs.
        zero_init: zero the last BN gamma of every residual branch, so each unit starts as the identity.
        unit_options: passed to every unit (shortcut, stride_layout, groups, base_width).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        se: SEConfig,
        stem: str,
        in_channels: int,
        num_classes: int,
        zero_init: bool,
        **unit_options: object,
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            stem_width = 64
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            stem_width = widths[0]
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
            )
        stages: list[nn.Sequential] = []
        channels = stem_width
        for index, (count, planes) in enumerate(zip(layers, widths, strict=True)):
            stage = index + 2
            units: list[_Unit] = []
            for i in range(count):
                stride = 2 if i == 0 and index > 0 else 1
                unit = block(channels, planes, stride=stride, se=se, stage=stage, **unit_options)  # type: ignore[arg-type]
                if unit.se is not None:
                    unit.se.name = f"SE_{stage}_{i + 1}"
                units.append(unit)
                channels = unit.out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_weights(self, zero_init)

    def forward_features(self, x):  # type: ignore[no-untyped-def]
        return self.stages(self.stem(x))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _init_weights(model: nn.Module, zero_init: bool) -> None:
    """He (Kaiming) normal init for convs (paper §5.1 cites He et al. 2015), unit BN, optional zero gamma."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init:
        for m in model.modules():
            if isinstance(m, _Unit):
                nn.init.zeros_(m.last_bn().weight)


# ---- ImageNet ResNets (He et al. 2016, Table 1; ResNeXt: Xie et al. 2017) ----------------------------------

_IMAGENET_WIDTHS = (64, 128, 256, 512)
_BASIC_UNITS = ((2, 64), (3, 128), (4, 256), (5, 512))
_BOTTLENECK_OUT = (256, 512, 1024, 2048)


def _units(layers: tuple[int, ...], out_widths: tuple[int, ...], first_stage: int = 2) -> tuple:
    return tuple((first_stage + i, n, c) for i, (n, c) in enumerate(zip(layers, out_widths, strict=True)))


def _imagenet(
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, ...],
    se: SEConfig,
    in_channels: int,
    num_classes: int,
    zero_init: bool,
    **unit_options: object,
) -> ResNet:
    return ResNet(
        block,
        layers,
        _IMAGENET_WIDTHS,
        se=se,
        stem="imagenet",
        in_channels=in_channels,
        num_classes=num_classes,
        zero_init=zero_init,
        **unit_options,
    )


@register_model(
    "resnet18",
    stages=(2, 3, 4, 5),
    units=_units((2, 2, 2, 2), _IMAGENET_WIDTHS),
    num_params=11_689_512,
    paper_name="ResNet-18",
)
def resnet18(*, se: SEConfig, in_channels: int = 3, num_classes: int = 1000, zero_init: bool = False) -> ResNet:
    """ResNet-18 (basic units, projection shortcuts)."""
    return _imagenet(BasicBlock, (2, 2, 2, 2), se, in_channels, num_classes, zero_init)


@register_model(
    "resnet34",
    stages=(2, 3, 4, 5),
    units=_units((3, 4, 6, 3), _IMAGENET_WIDTHS),
    num_params=21_797_672,
    paper_name="ResNet-34",
)
def resnet34(*, se: SEConfig, in_channels: int = 3, num_classes: int = 1000, zero_init: bool = False) -> ResNet:
    """ResNet-34 (basic units, projection shortcuts)."""
    return _imagenet(BasicBlock, (3, 4, 6, 3), se, in_channels, num_classes, zero_init)


def _bottleneck_model(
    name: str,
    paper_name: str,
    layers: tuple[int, ...],
    num_params: int,
    layout: StrideLayout = "original",
    **unit_options: int,
):
    @register_model(
        name, stages=(2, 3, 4, 5), units=_units(layers, _BOTTLENECK_OUT), num_params=num_params, paper_name=paper_name
    )
    def build(
        *,
        se: SEConfig,
        in_channels: int = 3,
        num_classes: int = 1000,
        zero_init: bool = False,
        stride_layout: StrideLayout = layout,
    ) -> ResNet:
        return _imagenet(
            Bottleneck, layers, se, in_channels, num_classes, zero_init, stride_layout=stride_layout, **unit_options
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{paper_name} with bottleneck units and projection shortcuts; default `stride_layout={layout!r}`. "
        "`'original'` puts the stride on the first 1×1 conv (the paper's ResNets, 3.86 GFLOPs for ResNet-50), "
        "`'v1.5'` on the 3×3 conv (torchvision and timm; also Xie et al.'s ResNeXt, 4.24 GFLOPs for ResNeXt-50)."
    )
    return build


resnet50 = _bottleneck_model("resnet50", "ResNet-50", (3, 4, 6, 3), 25_557_032)
resnet101 = _bottleneck_model("resnet101", "ResNet-101", (3, 4, 23, 3), 44_549_160)
resnet152 = _bottleneck_model("resnet152", "ResNet-152", (3, 8, 36, 3), 60_192_808)
# ResNeXt follows Xie et al. (fb.resnet.torch): stride on the grouped 3×3 conv, which the paper's Table 2
# GFLOPs reflect (4.24 for ResNeXt-50; the original layout would give 3.77).
resnext50_32x4d = _bottleneck_model(
    "resnext50_32x4d", "ResNeXt-50", (3, 4, 6, 3), 25_028_904, "v1.5", groups=32, base_width=4
)
resnext101_32x4d = _bottleneck_model(
    "resnext101_32x4d", "ResNeXt-101", (3, 4, 23, 3), 44_177_704, "v1.5", groups=32, base_width=4
)


# ---- CIFAR ResNets (He et al. 2016, §4.2) -------------------------------------------------------------------

_CIFAR_WIDTHS = (16, 32, 64)
_CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def _cifar_basic(depth: int, num_params: int):
    n = (depth - 2) // 6

    @register_model(
        f"resnet{depth}",
        stages=(2, 3, 4),
        units=_units((n, n, n), _CIFAR_WIDTHS),
        num_params=num_params,
        paper_name=f"ResNet-{depth}",
    )
    def build(
        *,
        se: SEConfig,
        in_channels: int = 3,
        num_classes: int = 10,
        zero_init: bool = False,
        shortcut: Shortcut = "A",
    ) -> ResNet:
        return ResNet(
            BasicBlock, (n, n, n), _CIFAR_WIDTHS, se=se, stem="cifar", in_channels=in_channels,
            num_classes=num_classes, zero_init=zero_init, shortcut=shortcut,
        )  # fmt: skip

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = (
        f"CIFAR ResNet-{depth}: 3×3 stem of 16 channels, three stages of {n} basic units (16, 32, 64 channels). "
        "Shortcuts default to He et al.'s option A (zero-padding, no parameters); option B projects."
    )
    return build


resnet20, resnet32, resnet44, resnet56, resnet110 = (_cifar_basic(d, p) for d, p in _CIFAR_PARAMS.items())


@register_model(
    "resnet164",
    stages=(2, 3, 4),
    units=_units((18, 18, 18), (64, 128, 256)),
    num_params=1_704_154,
    paper_name="ResNet-164",
)
def resnet164(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "B"
) -> ResNet:
    """CIFAR ResNet-164: three stages of 18 bottleneck units (outputs 64, 128, 256), projection shortcuts.

    Note:
        The paper's Table 4 cites the pre-activation ResNet-164 of He et al. (ECCV 2016). This library's units
        are post-activation (original ResNet) so that the SE placements mean the same on every backbone; the
        parameter count differs from the pre-activation net only in BN placement.
    """
    return ResNet(
        Bottleneck, (18, 18, 18), (16, 32, 64), se=se, stem="cifar", in_channels=in_channels,
        num_classes=num_classes, zero_init=zero_init, shortcut=shortcut,
    )  # fmt: skip
