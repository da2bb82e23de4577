"""A dataset ready for a run: read (`readers`), split into train, validation and test with a seeded hold-out and
subsets, and wrapped in loaders (`loaders`) on the training device; a warm worker's cache keeps the decoded splits
and scanned folders between trials.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ablations.config import DataSection, check_split
from ablations.data.loaders import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, FolderLoader, Loader, single_crop
from ablations.data.readers import read_arrays
from ablations.errors import SenetError

# torchvision is imported where image folders need it: Fashion-MNIST and synthetic data never pay for its import
# in a sweep worker.


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 NCHW images in [0, 1] units, exact (float64 from a 256-bin histogram)."""
    values = torch.arange(256, dtype=torch.float64, device=images.device)
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
    p = counts.double() / counts.sum(1, keepdim=True)
    mean = (p * values).sum(1)
    std = ((p * values**2).sum(1) - mean**2).clamp(min=0).sqrt()
    return (mean / 255).float().cpu(), (std / 255).float().cpu()


@dataclass
class DataBundle:
    """The three loaders of a dataset and the shape facts a model builder needs."""

    train: Loader
    val: Loader
    test: Loader
    num_classes: int
    in_channels: int
    image_size: int  # pixels, side of the images the model sees
    train_size: int
    val_size: int
    test_size: int
    name: str


def split_indices(n_train: int, n_test: int, cfg: DataSection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, validation and test indices: a seeded validation hold-out, then the subsets.

    He et al. (2016, §4.2) train on 45k CIFAR-10 images and validate on the other 5k; `val_size` is that 5k.
    The first `val_size` images of a `data_seed` permutation of the training set validate, the rest train.

    Raises:
        SenetError: the hold-out or a subset does not fit the images found.
    """
    check_split(cfg, n_train, n_test)
    gen = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(n_train, generator=gen)
    # A test subset is a random draw too: image folders list val/ class by class, so its head is one class.
    test = torch.arange(n_test) if cfg.test_subset is None else torch.randperm(n_test, generator=gen)
    return perm[cfg.val_size :][: cfg.train_subset], perm[: cfg.val_size][: cfg.val_subset], test[: cfg.test_subset]


DataCache = dict[str, Any]  # what a warm worker keeps between trials: scanned folders, decoded splits on the device


def _cache_key(cfg: DataSection, device: torch.device) -> str:
    """Everything that decides the cached arrays; the augmentation and loader settings are applied per trial."""
    return cfg.model_dump_json(exclude={"augment", "workers", "download"}) + f"@{device}"


def _folder_sets(cfg: DataSection) -> tuple[Any, Any, Any]:
    """The scanned train/ and val/ folders: (train with augmentation, train with eval transforms, val)."""
    from torchvision import datasets, transforms

    if cfg.root is None:
        raise SenetError("data.root: required for imagefolder; a folder with train/ and val/ (one folder per class)")
    root = Path(cfg.root)
    s = cfg.image_size
    norm = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_tf = single_crop(s)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip(), *norm])
    try:
        train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf if cfg.augment else eval_tf)
        test_set = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except FileNotFoundError as err:
        raise SenetError(
            f"data.root: {err}; imagefolder needs {root}/train and {root}/val, one folder per class"
        ) from err
    if train_set.classes != test_set.classes:
        raise SenetError(f"data.root: {root}/train and {root}/val hold different class folders; they must match")
    # A shallow copy shares the scanned file list (slow to rebuild for ImageNet) but gets the eval transform.
    val_set = copy.copy(train_set)
    val_set.transform = eval_tf
    return train_set, val_set, test_set


def _folder_bundle(
    cfg: DataSection,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    channels_last: bool,
    seed: int,
    drop_last: bool,
    cache: DataCache | None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """ImageNet-layout folders: train/ gives train and validation, val/ is the test set."""
    key = _cache_key(cfg, device) + f"/augment={cfg.augment}"
    sets = cache.get(key) if cache is not None else None
    if sets is None:
        sets = _folder_sets(cfg)
        if cache is not None:
            cache[key] = sets
    train_set, val_set, test_set = sets
    train_idx, val_idx, test_idx = split_indices(len(train_set), len(test_set), cfg)

    def loader(dataset: Dataset, idx: torch.Tensor, size: int, train: bool) -> FolderLoader:
        subset = Subset(dataset, idx.tolist())
        return FolderLoader(
            subset, size, train=train, device=device, seed=seed, workers=cfg.workers, drop_last=train and drop_last,
            channels_last=channels_last, shard=shard if train else (0, 1),
        )  # fmt: skip

    return DataBundle(
        train=loader(train_set, train_idx, batch_size, True),
        val=loader(val_set, val_idx, eval_batch_size, False),
        test=loader(test_set, test_idx, eval_batch_size, False),
        num_classes=len(train_set.classes),
        in_channels=3,
        image_size=cfg.image_size,
        train_size=len(train_idx),
        val_size=len(val_idx),
        test_size=len(test_idx),
        name=cfg.dataset,
    )


Splits = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def _device_splits(cfg: DataSection, device: torch.device) -> tuple[Splits, torch.Tensor, torch.Tensor, int]:
    """Train, validation and test (images, labels) on `device`, the training split's channel statistics and the
    class count."""
    data = read_arrays(cfg)
    train_idx, val_idx, test_idx = split_indices(len(data.train_y), len(data.test_y), cfg)

    def put(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[idx].to(device), y[idx].to(device)

    splits = (
        put(data.train_x, data.train_y, train_idx),
        put(data.train_x, data.train_y, val_idx),
        put(data.test_x, data.test_y, test_idx),
    )
    mean, std = channel_stats(splits[0][0])
    return splits, mean, std, data.num_classes


def build_data(
    cfg: DataSection,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    device: torch.device,
    channels_last: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    cache: DataCache | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """Load `cfg.dataset`, split it and wrap train, validation and test in loaders on `device`.

    Args:
        cfg: the data config.
        batch_size: training images per batch.
        eval_batch_size: validation and test images per batch; None = `batch_size`.
        device: where batches (and, for small datasets, the whole split) live.
        channels_last: return batches in channels-last memory format.
        seed: seed of the training order and augmentation; None = `cfg.data_seed`. Pass the run's seed so that
            repeated runs differ in data order as well as initialisation.
        drop_last: skip the last short training batch (one input shape for a compiled model).
        cache: a dict kept between calls (a warm worker's): decoded splits and scanned folders are reused.
        shard: (rank, world) of a trial across `world` devices: the training loader gives this rank its part of
            every batch of `batch_size` (validation and test stay whole: rank 0 evaluates them).

    Raises:
        SenetError: the dataset is missing or corrupt, or a size does not fit it.
    """
    eval_bs = eval_batch_size or batch_size
    train_seed = cfg.data_seed if seed is None else seed
    if cfg.dataset == "imagefolder":
        return _folder_bundle(cfg, batch_size, eval_bs, device, channels_last, train_seed, drop_last, cache, shard)
    key = _cache_key(cfg, device)
    found = cache.get(key) if cache is not None else None
    if found is None:
        found = _device_splits(cfg, device)
        if cache is not None:
            cache[key] = found
    (train_xy, val_xy, test_xy), mean, std, num_classes = found

    def loader(part: tuple[torch.Tensor, torch.Tensor], size: int, train: bool) -> DeviceLoader:
        return DeviceLoader(
            *part, size, train=train, mean=mean, std=std, augment=train and cfg.augment, seed=train_seed,
            drop_last=train and drop_last, channels_last=channels_last, shard=shard if train else (0, 1),
        )  # fmt: skip

    return DataBundle(
        train=loader(train_xy, batch_size, True),
        val=loader(val_xy, eval_bs, False),
        test=loader(test_xy, eval_bs, False),
        num_classes=num_classes,
        in_channels=train_xy[0].shape[1],
        image_size=train_xy[0].shape[-1],
        train_size=len(train_xy[1]),
        val_size=len(val_xy[1]),
        test_size=len(test_xy[1]),
        name=cfg.dataset,
    )
