"""Tiny image folders in the on-disk format the read-back commands take, the test image size, and a network's
predictions on such a folder computed image by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ablations.data.loaders import single_crop

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
