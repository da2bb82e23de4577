"""Shared helpers of the read-back tests (evaluate, knockout, excitation on imported weights): tiny image folders in
the on-disk format, tiny networks whose predictions differ between images, and hand-computed predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ablations.cli import main
from ablations.data.loaders import single_crop
from senet_core import build_model, se_blocks

SIZE = 32  # --image-size of the tests: resize to 36, centre crop 32
GOLDFISH, PUG, PLANE, CLIFF, TENCH = "n01443537", "n02110958", "n03954731", "n09246464", "n01440764"


def write_folder(root: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    """`root/<class>/<i>.png|jpg`: smooth random colour images of 40×48 pixels, one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((48, 40), Image.BILINEAR)
            image.save(root / c / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


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


@torch.no_grad()
def hand_predictions(model: torch.nn.Module, root: Path, targets: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, top-5 classes) of every image of `root`, read one by one with the paper's single crop at SIZE."""
    crop = single_crop(SIZE)
    labels, ranked = [], []
    for folder in sorted(targets):
        for path in sorted((root / folder).iterdir()):
            x = crop(Image.open(path).convert("RGB"))[None]
            out = model.eval()(x)
            ranked.append(out.topk(min(5, out.shape[1]), dim=1).indices[0].numpy())
            labels.append(targets[folder])
    return np.array(labels), np.stack(ranked)


def run_text(*args: str, capsys: Any) -> str:
    """`senet-ablate ARGS` in this process on tiny images (no worker processes); its stdout."""
    capsys.readouterr()
    assert main([*args, "--workers", "0", "--image-size", str(SIZE)]) == 0
    return capsys.readouterr().out


def run_json(*args: str, capsys: Any) -> dict[str, Any]:
    """`senet-ablate ARGS --json` in this process; its stdout parsed."""
    return json.loads(run_text(*args, "--json", "--no-progress", capsys=capsys))


def run_error(*args: str, capsys: Any) -> str:
    """`senet-ablate ARGS`, which must fail as a user error: its one stderr line."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("senet-ablate: error: "), err
    return err.removeprefix("senet-ablate: error: ")
