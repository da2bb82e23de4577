"""ResNets of He et al. for ImageNet (ResNet-18…152, ResNeXt) and CIFAR (6n+2 basic, ResNet-164).

Stage numbering follows the paper (Table 1): stage 1 is the stem, ImageNet nets have residual stages 2-5
(conv2_x … conv5_x), CIFAR nets 2-4. The SE blocks are named SE_<stage>_<unit> (SE_4_6 is the sixth unit of
stage 4), the names the excitation probe reports.
"""

from __future__ import annotations

from torch import nn

from senet_core._init import init_weights
from senet_core._registry import register_model
from senet_core.se import SEConfig
from senet_core.stem import StemPool, default_stem_pool, imagenet_stem
from senet_core.units import BasicBlock, Bottleneck, Shortcut, StrideLayout, _Unit


class ResNet(nn.Module):
    """A stem, residual stages, global average pooling and a linear classifier.

    Args:
        block: unit class, `BasicBlock` or `Bottleneck`.
        layers: units per residual stage.
        widths: `planes` per stage (the unit's output is `planes * block.expansion`).
        se: where and what SE blocks to add.
        stem: `imagenet` (7×7/2 conv + 3×3/2 max-pool, 64 channels) or `cifar` (3×3 conv, `widths[0]` channels).
        stem_pool: the ImageNet stem's max-pool, `torchvision` or `caffe` (see `senet_core.stem`); None for `cifar`.
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
        stem_pool: StemPool | None = None,
        **unit_options: object,
    ) -> None:
        super().__init__()
        if (stem == "imagenet") != (stem_pool is not None):
            raise ValueError(f"stem_pool={stem_pool!r}: the imagenet stem needs one, the cifar stem has no pool")
        if stem_pool is not None:
            stem_width = 64
            self.stem = imagenet_stem(in_channels, stem_width, stem_pool)
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
                    unit.se.place(stage, i + 1)
                units.append(unit)
                channels = unit.out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)
        if zero_init:
            for m in self.modules():
                if isinstance(m, _Unit):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x):  # type: ignore[no-untyped-def]
        return self.stages(self.stem(x))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


# ---- ImageNet ResNets (He et al. 2016, Table 1; ResNeXt: Xie et al. 2017) ----------------------------------

_IMAGENET_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_OUT = (256, 512, 1024, 2048)
_STAGES = (2, 3, 4, 5)


def _units(layers: tuple[int, ...], out_widths: tuple[int, ...], first_stage: int = 2) -> tuple:
    return tuple((first_stage + i, n, c) for i, (n, c) in enumerate(zip(layers, out_widths, strict=True)))


def _imagenet(
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, ...],
    se: SEConfig,
    in_channels: int,
    num_classes: int,
    zero_init: bool,
    stem_pool: StemPool | None,
    stride_layout: StrideLayout | None = None,
    **unit_options: object,
) -> ResNet:
    """An ImageNet ResNet; an unset `stem_pool` follows the stride layout (`senet_core.stem.default_stem_pool`)."""
    if stride_layout is not None:
        unit_options["stride_layout"] = stride_layout
    return ResNet(
        block, layers, _IMAGENET_WIDTHS, se=se, stem="imagenet", in_channels=in_channels, num_classes=num_classes,
        zero_init=zero_init, stem_pool=stem_pool or default_stem_pool(stride_layout), **unit_options,
    )  # fmt: skip


@register_model("resnet18", stages=_STAGES, units=_units((2, 2, 2, 2), _IMAGENET_WIDTHS), num_params=11_689_512,
                paper_name="ResNet-18")  # fmt: skip
def resnet18(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNet-18 (basic units, projection shortcuts); `stem_pool` defaults to `torchvision` (see ResNet-50)."""
    return _imagenet(BasicBlock, (2, 2, 2, 2), se, in_channels, num_classes, zero_init, stem_pool)


@register_model("resnet34", stages=_STAGES, units=_units((3, 4, 6, 3), _IMAGENET_WIDTHS), num_params=21_797_672,
                paper_name="ResNet-34")  # fmt: skip
def resnet34(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNet-34 (basic units, projection shortcuts); `stem_pool` defaults to `torchvision` (see ResNet-50)."""
    return _imagenet(BasicBlock, (3, 4, 6, 3), se, in_channels, num_classes, zero_init, stem_pool)


@register_model("resnet50", stages=_STAGES, units=_units((3, 4, 6, 3), _BOTTLENECK_OUT), num_params=25_557_032,
                paper_name="ResNet-50")  # fmt: skip
def resnet50(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stride_layout: StrideLayout = "original",
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNet-50: 3, 4, 6, 3 bottleneck units.

    `stride_layout="original"` (the paper's, 3.86 GFLOPs) puts the downsampling stride on the first 1×1 conv,
    `"v1.5"` (torchvision, timm; 4.09 GFLOPs) on the 3×3 conv. `stem_pool` is the stem's max-pool: `caffe` (no
    padding, ceil mode; the authors' released SE-ResNets) or `torchvision` (padding 1, floor); unset, it is `caffe`
    for the original layout and `torchvision` for v1.5 (`senet_core.stem.default_stem_pool`). Params and GFLOPs
    do not depend on it.
    """
    return _imagenet(Bottleneck, (3, 4, 6, 3), se, in_channels, num_classes, zero_init, stem_pool,
                     stride_layout=stride_layout)  # fmt: skip


@register_model("resnet101", stages=_STAGES, units=_units((3, 4, 23, 3), _BOTTLENECK_OUT), num_params=44_549_160,
                paper_name="ResNet-101")  # fmt: skip
def resnet101(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stride_layout: StrideLayout = "original",
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNet-101: 3, 4, 23, 3 bottleneck units; `stride_layout` and `stem_pool` as for ResNet-50."""
    return _imagenet(Bottleneck, (3, 4, 23, 3), se, in_channels, num_classes, zero_init, stem_pool,
                     stride_layout=stride_layout)  # fmt: skip


@register_model("resnet152", stages=_STAGES, units=_units((3, 8, 36, 3), _BOTTLENECK_OUT), num_params=60_192_808,
                paper_name="ResNet-152")  # fmt: skip
def resnet152(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stride_layout: StrideLayout = "original",
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNet-152: 3, 8, 36, 3 bottleneck units; `stride_layout` and `stem_pool` as for ResNet-50."""
    return _imagenet(Bottleneck, (3, 8, 36, 3), se, in_channels, num_classes, zero_init, stem_pool,
                     stride_layout=stride_layout)  # fmt: skip


# ResNeXt follows Xie et al. (fb.resnet.torch): stride on the grouped 3×3 conv, which the paper's Table 2
# GFLOPs reflect (4.24 for ResNeXt-50; the original layout would give 3.77).
@register_model("resnext50_32x4d", stages=_STAGES, units=_units((3, 4, 6, 3), _BOTTLENECK_OUT),
                num_params=25_028_904, paper_name="ResNeXt-50")  # fmt: skip
def resnext50_32x4d(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stride_layout: StrideLayout = "v1.5",
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNeXt-50 (32×4d): ResNet-50's units with 32 groups of width 4 in the first stage's 3×3 conv.

    `stem_pool` as for ResNet-50 (default `torchvision` with the v1.5 layout; the released SE-ResNeXt uses `caffe`).
    """
    return _imagenet(Bottleneck, (3, 4, 6, 3), se, in_channels, num_classes, zero_init, stem_pool,
                     stride_layout=stride_layout, groups=32, base_width=4)  # fmt: skip


@register_model("resnext101_32x4d", stages=_STAGES, units=_units((3, 4, 23, 3), _BOTTLENECK_OUT),
                num_params=44_177_704, paper_name="ResNeXt-101")  # fmt: skip
def resnext101_32x4d(
    *,
    se: SEConfig,
    in_channels: int = 3,
    num_classes: int = 1000,
    zero_init: bool = False,
    stride_layout: StrideLayout = "v1.5",
    stem_pool: StemPool | None = None,
) -> ResNet:
    """ResNeXt-101 (32×4d): ResNet-101's units with 32 groups of width 4; `stem_pool` as for ResNeXt-50."""
    return _imagenet(Bottleneck, (3, 4, 23, 3), se, in_channels, num_classes, zero_init, stem_pool,
                     stride_layout=stride_layout, groups=32, base_width=4)  # fmt: skip


# ---- CIFAR ResNets (He et al. 2016, §4.2) -------------------------------------------------------------------

_CIFAR_WIDTHS = (16, 32, 64)
_CIFAR_STAGES = (2, 3, 4)


def _cifar_units(depth: int) -> tuple:
    n = (depth - 2) // 6
    return _units((n, n, n), _CIFAR_WIDTHS)


def _cifar(depth: int, se: SEConfig, in_channels: int, num_classes: int, zero_init: bool, shortcut: Shortcut) -> ResNet:
    """He et al.'s 6n+2 CIFAR net: a 3×3 stem of 16 channels, three stages of n basic units (16, 32, 64 channels).
    Shortcuts default to their option A (zero-padding, no parameters); option B projects."""
    n = (depth - 2) // 6
    return ResNet(
        BasicBlock, (n, n, n), _CIFAR_WIDTHS, se=se, stem="cifar", in_channels=in_channels, num_classes=num_classes,
        zero_init=zero_init, shortcut=shortcut,
    )  # fmt: skip


@register_model("resnet8", stages=_CIFAR_STAGES, units=_cifar_units(8), num_params=75_290, paper_name="ResNet-8")
def resnet8(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-8: three stages of 1 basic unit (the smallest 6n+2 net; minutes-long CPU studies)."""
    return _cifar(8, se, in_channels, num_classes, zero_init, shortcut)


@register_model("resnet14", stages=_CIFAR_STAGES, units=_cifar_units(14), num_params=172_506, paper_name="ResNet-14")
def resnet14(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-14: three stages of 2 basic units."""
    return _cifar(14, se, in_channels, num_classes, zero_init, shortcut)


@register_model("resnet20", stages=_CIFAR_STAGES, units=_cifar_units(20), num_params=269_722, paper_name="ResNet-20")
def resnet20(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-20: three stages of 3 basic units."""
    return _cifar(20, se, in_channels, num_classes, zero_init, shortcut)


@register_model("resnet32", stages=_CIFAR_STAGES, units=_cifar_units(32), num_params=464_154, paper_name="ResNet-32")
def resnet32(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-32: three stages of 5 basic units."""
    return _cifar(32, se, in_channels, num_classes, zero_init, shortcut)


@register_model("resnet44", stages=_CIFAR_STAGES, units=_cifar_units(44), num_params=658_586, paper_name="ResNet-44")
def resnet44(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-44: three stages of 7 basic units."""
    return _cifar(44, se, in_channels, num_classes, zero_init, shortcut)


@register_model("resnet56", stages=_CIFAR_STAGES, units=_cifar_units(56), num_params=853_018, paper_name="ResNet-56")
def resnet56(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-56: three stages of 9 basic units."""
    return _cifar(56, se, in_channels, num_classes, zero_init, shortcut)


@register_model(
    "resnet110", stages=_CIFAR_STAGES, units=_cifar_units(110), num_params=1_727_962, paper_name="ResNet-110"
)
def resnet110(
    *, se: SEConfig, in_channels: int = 3, num_classes: int = 10, zero_init: bool = False, shortcut: Shortcut = "A"
) -> ResNet:
    """CIFAR ResNet-110: three stages of 18 basic units."""
    return _cifar(110, se, in_channels, num_classes, zero_init, shortcut)


@register_model(
    "resnet164",
    stages=_CIFAR_STAGES,
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
