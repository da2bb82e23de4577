"""Weight initialisation shared by every backbone (private infrastructure)."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for convs (paper §5.1 cites He et al. 2015), unit BN, zero conv biases.

    Linear layers keep PyTorch's default init, as torchvision's ResNets do. A network built on the `meta` device
    (to count its cost) has no values to initialise: it is left as is, which also spares the 1.5 s that torch's
    first `normal_` on a meta tensor spends importing its decompositions.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
