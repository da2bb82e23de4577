"""The ImageNet ResNet stem (He et al. 2016, Table 1 conv1 + the 3×3/2 max-pool) with its two max-poolings.

torchvision (and timm's `resnet*` / `seresnet*`) pads the max-pool by 1 and rounds its output size down. The
Caffe models the SENet authors released (ported to PyTorch as timm's `legacy_seresnet*` / `legacy_seresnext*`)
do not pad and round up (Caffe's ceil mode). Both give 56×56 at 224×224, have no parameters and no counted
multiply-adds, but their windows differ, so weights trained with one compute something else with the other.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from senet_core.units import StrideLayout

StemPool = Literal["torchvision", "caffe"]


def default_stem_pool(stride_layout: StrideLayout | None) -> StemPool:
    """The stem pool a backbone gets when `model.stem_pool` is not set.

    `caffe` for the paper's `original` stride layout: that is the network the authors trained and released
    (SE-ResNet-50/101/152), so the default reproduces their models. `torchvision` for `v1.5` (torchvision, timm,
    ResNeXt) and for the basic-unit nets without a stride layout (ResNet-18/34), whose public weights use it.

    Note:
        The released SE-ResNeXts are `v1.5` with the Caffe pool; they need `model.stem_pool=caffe` set.
    """
    return "caffe" if stride_layout == "original" else "torchvision"


def imagenet_stem(in_channels: int, width: int, pool: StemPool) -> nn.Sequential:
    """7×7/2 conv (no bias), BN, ReLU, then the 3×3/2 max-pool of `pool`'s kind; indices 0 and 1 hold weights."""
    if pool == "caffe":
        max_pool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    else:
        max_pool = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        max_pool,
    )
