"""The datasets' on-disk formats read into memory: Fashion-MNIST's idx files, CIFAR's pickles (through
torchvision) and the seeded synthetic set, each as whole uint8 arrays, from where `ablations.datafiles` finds them.
Splitting them is `build`'s work, holding them on the device and batching them `loaders`'.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ablations.config import DATASETS, DataSection
from ablations.datafiles import FASHION_FILES, DataPlace, MissingData, download_root, locate
from ablations.errors import SenetError

# torchvision is imported where a dataset needs it (CIFAR, downloads): Fashion-MNIST and synthetic data never pay
# for its import in a sweep worker.


@dataclass
class Arrays:
    """A whole dataset in memory: uint8 NCHW images and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def _fetch(make: Callable[[], object], name: str, root: Path) -> None:
    try:
        make()
    except (OSError, RuntimeError) as err:
        raise SenetError(f"data.download: could not download {name} into {root} ({err}); fetch it by hand") from err


def download(data: DataPlace) -> None:
    """Fetch a packaged dataset through torchvision into `data.root` (default: results/data), where `locate` finds
    it next (a sweep does this before it plans, since the trial keys need the files)."""
    from torchvision import datasets

    kind = {"fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    name = "Fashion-MNIST" if data.dataset == "fashion_mnist" else data.dataset
    target = download_root(data)
    _fetch(lambda: kind[data.dataset](str(target), download=True), name, target)


def _files(cfg: DataSection) -> list[Path]:
    """The dataset's files where `locate` finds them, downloaded first when missing and `data.download` allows."""
    try:
        return locate(cfg)
    except MissingData:
        if not cfg.download:
            raise
    download(cfg)
    return locate(cfg)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, optionally gzipped), checking magic number and byte count."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise SenetError(f"{path}: unreadable ({err}); reinstall or re-download the dataset") from err
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(data) < head or struct.unpack(">I", data[:4])[0] != magic:
        raise SenetError(f"{path}: not an idx file with magic number {magic}; reinstall or re-download the dataset")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    if len(data) - head != math.prod(dims):
        raise SenetError(f"{path}: header says {dims} but holds {len(data) - head} bytes; the file is truncated")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def _load_fashion(cfg: DataSection) -> Arrays:
    """Fashion-MNIST from raw idx files, where `locate` finds them."""
    files = dict(zip(FASHION_FILES, _files(cfg), strict=True))
    folder = files[FASHION_FILES[0]].parent
    classes = DATASETS["fashion_mnist"].classes

    def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = _read_idx(files[f"{prefix}-images-idx3-ubyte"], 2051)
        y = _read_idx(files[f"{prefix}-labels-idx1-ubyte"], 2049)
        if len(x) != len(y) or y.max(initial=0) >= classes:
            raise SenetError(
                f"{folder}: {len(x)} {prefix} images but {len(y)} labels in 0..{classes - 1}; the files do not match"
            )
        return torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64))

    return Arrays(*pair("train"), *pair("t10k"), num_classes=classes)


def _load_cifar(cfg: DataSection) -> Arrays:
    """CIFAR-10/100 through torchvision (python pickles, md5-checked), as uint8 NCHW arrays."""
    from torchvision import datasets

    kind = datasets.CIFAR10 if cfg.dataset == "cifar10" else datasets.CIFAR100
    folder = _files(cfg)[0].parent
    root = folder.parent
    try:
        train, test = kind(str(root), train=True), kind(str(root), train=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise SenetError(f"{folder}: incomplete or corrupt ({err}); delete it and set data.download=true") from err

    def nchw(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return Arrays(*nchw(train), *nchw(test), num_classes=len(train.classes))


def _load_synthetic(cfg: DataSection) -> Arrays:
    """Seeded random images whose class shows in a smooth per-class pattern under noise; for tests only."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    k, c, s = cfg.synthetic_classes, cfg.synthetic_channels, cfg.synthetic_size
    # Smooth patterns barely change under a 4-pixel shift; a flip gives each class a second pattern to learn.
    coarse = torch.rand(k, c, 4, 4, generator=gen)
    patterns = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False) * 160 + 48

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=gen)
        x = patterns[y] + 24 * torch.randn(n, c, s, s, generator=gen)
        return x.round().clamp(0, 255).to(torch.uint8), y

    return Arrays(*draw(cfg.synthetic_train), *draw(cfg.synthetic_test), num_classes=k)


_READERS: dict[str, Callable[[DataSection], Arrays]] = {
    "fashion_mnist": _load_fashion,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "synthetic": _load_synthetic,
}


def read_arrays(cfg: DataSection) -> Arrays:
    """The whole dataset `cfg.dataset` (train and test splits) from disk, or drawn for `synthetic`."""
    return _READERS[cfg.dataset](cfg)
