"""Tiny networks whose predictions differ between images, as trained ones do (senet_core only, no harness)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from senet_core import build_model, se_blocks


def trained_like(name: str, **options: Any) -> torch.nn.Module:
    """A network with random BN statistics and affine parameters, so predictions vary from image to image."""
    torch.manual_seed(0)
    model = build_model(name, options)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def saturate_gates(model: torch.nn.Module) -> torch.nn.Module:
    """Every SE gate exactly 1 in float32 (sigmoid(30)), so the SE blocks do nothing."""
    with torch.no_grad():
        for block in se_blocks(model).values():
            block.fc2.weight.zero_()
            block.fc2.bias.fill_(30.0)
    return model


def save(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path
