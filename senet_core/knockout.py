"""SE knock-out, an ablation without retraining: fix the gates of chosen SE blocks of a trained network.

The paper (§4) says the last stage's SE blocks can be removed "at only a small cost in performance (<0.1% top-5
error on ImageNet)". With every gate of a block fixed at 1 the block is the identity, so the network is the same
trained network without that SE block; a gate fixed at its mean activation over the data is the control that keeps
the block's average rescaling but removes its dependence on the input. Like the probe, the override hooks the
gates only while it is open and never changes the model otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from senet_core.probe import GateHooks
from senet_core.se import SEBlock


class GateOverride(GateHooks):
    """Context manager replacing the gate output s of named SE blocks, so that the block computes x · value.

    Example:
        >>> with GateOverride(model, {"SE_5_1": 1.0, "SE_5_2": 1.0, "SE_5_3": 1.0}):  # no SE in stage 5
        ...     logits = model(images)

    Args:
        model: a model built by `build_model`.
        values: block name → a number (1.0 knocks the block out) or a (channels,) tensor of per-channel gates
            (e.g. the gate's mean activation). An unknown name raises KeyError listing the model's blocks; a
            tensor of the wrong length raises ValueError.
    """

    def __init__(self, model: nn.Module, values: Mapping[str, float | torch.Tensor]) -> None:
        super().__init__(model, values)
        self._fixed: dict[str, torch.Tensor] = {}
        for name, value in values.items():
            channels = self._blocks[name].channels
            fixed = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
            if fixed.ndim == 0:
                fixed = fixed.expand(channels)
            if fixed.shape != (channels,):
                raise ValueError(f"{name}: {tuple(fixed.shape)} gate values for {channels} channels")
            self._fixed[name] = fixed.reshape(1, -1, 1, 1)

    def _hook(self, name: str, block: SEBlock) -> Callable[..., torch.Tensor]:
        fixed = self._fixed[name]

        def replace(_module: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            return fixed.to(device=out.device, dtype=out.dtype).expand_as(out)

        return replace
