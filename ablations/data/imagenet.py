"""ImageNet's classes and image folders read for evaluation: the 1000 ILSVRC-2012 synsets in their standard sorted
order (a model's class index) with their WordNet lemmas, the paper's classes of Figs. 6-7, and `imagefolder:DIR`
folders whose sub-folders are mapped to a model's class indices.

`published/imagenet_synsets.txt` is a copy of timm's `timm/data/_info/imagenet_synsets.txt` and
`published/imagenet_synset_to_lemma.txt` the 1000 matching lines of its `imagenet_synset_to_lemma.txt` (timm is
Apache-2.0), so evaluation needs no timm.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ablations.data.loaders import single_crop
from ablations.errors import SenetError

DATA_PREFIX = "imagefolder:"
# The classes of the paper's Figs. 6-7 (§7.2) by WordNet id. "plane" is read as n03954731 ("plane, carpenter's
# plane, woodworking plane"): it is the one ImageNet class whose first lemma is "plane", and the paper's other three
# names are the first lemmas of their synsets. The aircraft classes are airliner (n02690373) and warplane
# (n04552348); give one with --classes to draw it instead.
PAPER_CLASSES = {"goldfish": "n01443537", "pug": "n02110958", "plane": "n03954731", "cliff": "n09246464"}
_WNID = re.compile(r"n\d{8}")


@cache
def synsets() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids, sorted: index i is class i of every ImageNet-1k model."""
    return files("ablations").joinpath("published/imagenet_synsets.txt").read_text().split()


@cache
def lemmas() -> dict[str, str]:
    """WordNet id → its lemmas, e.g. "goldfish, Carassius auratus"."""
    text = files("ablations").joinpath("published/imagenet_synset_to_lemma.txt").read_text()
    return dict(line.split("\t", 1) for line in text.splitlines() if line)


def class_name(wnid: str) -> str:
    """The first lemma of a synset (e.g. "goldfish"), or the id itself when unknown."""
    return lemmas().get(wnid, wnid).split(",")[0]


class FolderBatches:
    """(images, model class indices) batches of an image folder, in file order."""

    def __init__(self, dataset: Any, targets: list[int], batch_size: int, workers: int) -> None:
        self._targets = torch.tensor(targets)
        self._loader = DataLoader(dataset, batch_size, shuffle=False, num_workers=workers)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._loader:
            yield x, self._targets[y]


@dataclass
class EvalFolder:
    """An image folder seen through a model's classes.

    Attributes:
        root: the folder holding one sub-folder per class.
        folders: the class sub-folders, sorted.
        targets: the model's class index of each folder.
        imagenet: the folders are WordNet ids, mapped through the ILSVRC-2012 list (else: sorted order).
        dataset: torchvision's ImageFolder with the single-crop transform.
    """

    root: Path
    folders: list[str]
    targets: list[int]
    imagenet: bool
    dataset: Any

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        """How reports name model class `index`: its lemma for ImageNet, else its folder (or the index)."""
        if self.imagenet:
            return class_name(synsets()[index])
        return self.folders[index] if index < len(self.folders) else str(index)

    def batches(self, batch_size: int, workers: int) -> FolderBatches:
        return FolderBatches(self.dataset, self.targets, batch_size, workers)


def folder_root(spec: str) -> Path:
    """`imagefolder:DIR` → DIR/val when it exists (an ImageNet-layout root), else DIR."""
    if not spec.startswith(DATA_PREFIX):
        raise SenetError(f"--data: {spec!r} is not allowed; allowed: imagefolder:DIR (one sub-folder per class)")
    root = Path(spec.removeprefix(DATA_PREFIX)).expanduser()
    if not root.is_dir():
        raise SenetError(f"--data: {root}: no such folder")
    return root / "val" if (root / "val").is_dir() else root


def class_targets(folders: list[str], num_classes: int) -> tuple[list[int], bool]:
    """The model class of each (sorted) folder, and whether they were mapped as ImageNet WordNet ids.

    Folders named by WordNet ids are mapped through the ILSVRC-2012 list when the model has its 1000 classes;
    otherwise folder i is class i, as `data.dataset=imagefolder` trains (so at most `num_classes` folders).
    """
    if num_classes == len(synsets()) and all(_WNID.fullmatch(f) for f in folders):
        index = {w: i for i, w in enumerate(synsets())}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise SenetError(f"--data: folder {unknown[0]} is not one of the 1000 ILSVRC-2012 classes")
        return [index[f] for f in folders], True
    if len(folders) > num_classes:
        raise SenetError(
            f"--data: {len(folders)} class folders but the model has {num_classes} classes; folders that are not "
            "ImageNet WordNet ids are classes 0, 1, ... in sorted order"
        )
    return list(range(len(folders))), False


def open_folder(spec: str, num_classes: int, image_size: int = 224) -> EvalFolder:
    """The folder of `spec` with the paper's single-crop transform at `image_size`, mapped to `num_classes`.

    Raises:
        SenetError: a bad spec, a missing folder, no images, or folders the model's classes cannot hold.
    """
    from torchvision import datasets

    root = folder_root(spec)
    try:
        dataset = datasets.ImageFolder(str(root), transform=single_crop(image_size))
    except (FileNotFoundError, RuntimeError) as err:
        raise SenetError(f"--data: {root}: {err}") from None
    targets, imagenet = class_targets(list(dataset.classes), num_classes)
    return EvalFolder(root, list(dataset.classes), targets, imagenet, dataset)
