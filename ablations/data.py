"""Datasets for the ablations: split them, hold them where training runs, and batch them (reading the files is
`ablations.datasets`).

Small datasets (Fashion-MNIST, CIFAR, synthetic) live on the training device as uint8 tensors and are batched
and augmented there, as airbench does; image folders (ImageNet, Imagenette) stream through a DataLoader.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch.utils.data import DataLoader, Dataset, Subset

from ablations.datasets import read_arrays
from ablations.errors import SenetError

# torchvision is imported where image folders need it: Fashion-MNIST and synthetic data never pay for its import
# in a sweep worker.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 4  # pixels of zero padding before the random crop (He et al. 2016, §4.2)


class DataConfig(BaseModel):
    """Which dataset to load and how to split, subsample and augment it; user-facing names are `data.<field>`."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic"] = "fashion_mnist"
    root: str | None = None  # data folder; None = the dataset's default location
    val_size: int = 5000  # images held out of the training set for validation (He et al. 2016: 45k/5k)
    data_seed: int = 0  # fixes the validation split, the subsets and the synthetic images
    train_subset: int | None = None  # training images kept after the split; None = all
    val_subset: int | None = None  # validation images kept; None = all
    test_subset: int | None = None  # test images kept (a seeded random choice); None = all, in file order
    augment: bool = True  # pad-4 random crop + horizontal flip on the train split (imagefolder: random resized crop)
    download: bool = False  # let torchvision fetch a missing dataset (fashion_mnist, cifar10, cifar100)
    image_size: int = 224  # pixels, side of the ImageFolder crop
    workers: int = 4  # ImageFolder DataLoader worker processes
    synthetic_classes: int = 10  # classes
    synthetic_size: int = 32  # pixels, side of a synthetic image
    synthetic_channels: int = 3  # channels
    synthetic_train: int = 512  # images in the training set, before the validation split
    synthetic_test: int = 256  # images in the test set


def _mix(seed: int, epoch: int) -> int:
    # Plain seed + epoch would make run seed 1, epoch 0 replay run seed 0, epoch 1; SeedSequence keeps them apart.
    return int(np.random.SeedSequence((seed % 2**64, epoch)).generate_state(1, np.uint64)[0])


def _crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each image from its zero-padded copy at its own offset and mirror the flagged ones, with no loop.

    He et al. (2016, §4.2): "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from the
    padded image or its horizontal flip".

    Args:
        x: uint8 images, (B, C, H, W).
        shifts: (B, 2) crop offsets (row, column) in 0..2*PAD.
        flips: (B,) bool, True where the crop is mirrored.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = shifts[:, :1] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 NCHW images in [0, 1] units, exact (float64 from a 256-bin histogram)."""
    values = torch.arange(256, dtype=torch.float64, device=images.device)
    counts = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
    p = counts.double() / counts.sum(1, keepdim=True)
    mean = (p * values).sum(1)
    std = ((p * values**2).sum(1) - mean**2).clamp(min=0).sqrt()
    return (mean / 255).float().cpu(), (std / 255).float().cpu()


def _to_output(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class DeviceLoader:
    """Batches of a uint8 image tensor that lives on the training device, augmented there (airbench-style).

    The shuffle order and the augmentation of an epoch are drawn from a generator seeded with (seed, epoch), so
    `set_epoch(e)` before iterating reproduces epoch e exactly, e.g. after a resume. Each pass advances the
    epoch by one, so a loop that never calls `set_epoch` still gets a fresh order every epoch.

    Args:
        images: uint8 (N, C, H, W) on the device that will consume the batches.
        labels: int64 (N,).
        batch_size: images per batch.
        train: shuffle every epoch; False keeps the stored order.
        mean: per-channel mean in [0, 1] units, subtracted after scaling pixels to [0, 1].
        std: per-channel std in [0, 1] units.
        augment: pad-4 random crop and horizontal flip, drawn per image.
        seed: seed of the order and augmentation stream.
        drop_last: skip the final short batch.
        channels_last: return batches in channels-last memory format.
        dtype: floating dtype of the returned images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need uint8 NCHW images and one label each, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(images.device, torch.int64)
        self.batch_size, self.train, self.augment, self.drop_last = batch_size, train, augment, drop_last
        self.seed, self.epoch, self.channels_last, self.dtype = seed, 0, channels_last, dtype
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale = (1 / (255 * self.std)).view(1, -1, 1, 1).to(images.device)
        self._shift = (-self.mean / self.std).view(1, -1, 1, 1).to(images.device)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order and augmentation of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        self.epoch += 1
        n, device = len(self.images), self.images.device
        # Drawn on the CPU, so a run gives the same batches on any device.
        order = (torch.randperm(n, generator=gen) if self.train else torch.arange(n)).to(device)
        shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen).to(device) if self.augment else None
        flips = (torch.rand(n, generator=gen) < 0.5).to(device) if self.augment else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            part = slice(start, start + self.batch_size)
            x = self.images[order[part]]
            if shifts is not None and flips is not None:
                x = _crop_flip(x, shifts[part], flips[part])
            x = torch.addcmul(self._shift, x.float(), self._scale)
            yield _to_output(x, self.dtype, self.channels_last), self.labels[order[part]]


class FolderLoader:
    """A DataLoader over an image folder that yields device batches and has `set_epoch`, like DeviceLoader.

    The shuffle order is a function of (seed, epoch). The random crops run in worker processes whose generators
    are not re-seeded per epoch, so a resumed run sees the same order but not the same crops.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        train: bool,
        device: torch.device,
        seed: int = 0,
        workers: int = 4,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device, self.seed, self.epoch, self.channels_last, self.dtype = device, seed, 0, channels_last, dtype
        self.batch_size, self.train = batch_size, train
        self.mean, self.std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self._gen = torch.Generator()
        self._loader = DataLoader(
            dataset,
            batch_size,
            shuffle=train,
            generator=self._gen,
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._gen.manual_seed(_mix(self.seed, self.epoch))
        self.epoch += 1
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            yield _to_output(x, self.dtype, self.channels_last), y.to(self.device, non_blocking=True)


Loader = DeviceLoader | FolderLoader


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


def _take(idx: torch.Tensor, n: int | None, field: str) -> torch.Tensor:
    if n is None:
        return idx
    if not 1 <= n <= len(idx):
        raise SenetError(f"data.{field}: {n} is not allowed; allowed: 1..{len(idx)} or null for all")
    return idx[:n]


def split_indices(n_train: int, n_test: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, validation and test indices: a seeded validation hold-out, then the subsets.

    He et al. (2016, §4.2) train on 45k CIFAR-10 images and validate on the other 5k; `val_size` is that 5k.
    The first `val_size` images of a `data_seed` permutation of the training set validate, the rest train.
    """
    if not 1 <= cfg.val_size < n_train:
        raise SenetError(
            f"data.val_size: {cfg.val_size} is not allowed; allowed: 1..{n_train - 1} "
            f"(the {cfg.dataset} training set has {n_train} images)"
        )
    gen = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(n_train, generator=gen)
    # A test subset is a random draw too: image folders list val/ class by class, so its head is one class.
    test = torch.arange(n_test) if cfg.test_subset is None else torch.randperm(n_test, generator=gen)
    return (
        _take(perm[cfg.val_size :], cfg.train_subset, "train_subset"),
        _take(perm[: cfg.val_size], cfg.val_subset, "val_subset"),
        _take(test, cfg.test_subset, "test_subset"),
    )


def _check_sizes(cfg: DataConfig) -> None:
    lows = {"workers": 0, "image_size": 1, "synthetic_classes": 2, "synthetic_size": 1, "synthetic_channels": 1}
    lows |= {"synthetic_train": 2, "synthetic_test": 1}
    for field, low in lows.items():
        if getattr(cfg, field) < low:
            raise SenetError(f"data.{field}: {getattr(cfg, field)} is not allowed; allowed: >= {low}")


DataCache = dict[str, Any]  # what a warm worker keeps between trials: scanned folders, decoded splits on the device


def _cache_key(cfg: DataConfig, device: torch.device) -> str:
    """Everything that decides the cached arrays; the augmentation and loader settings are applied per trial."""
    return cfg.model_dump_json(exclude={"augment", "workers", "download"}) + f"@{device}"


def single_crop(size: int = 224) -> Any:
    """The paper's single-crop evaluation (§5.1): shorter side resized to 256 (256/224 of `size`), the centre
    `size`×`size` crop, ImageNet mean/std normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(int(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _folder_sets(cfg: DataConfig) -> tuple[Any, Any, Any]:
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
    cfg: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    channels_last: bool,
    seed: int,
    drop_last: bool,
    cache: DataCache | None,
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
            channels_last=channels_last,
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


def _device_splits(cfg: DataConfig, device: torch.device) -> tuple[Splits, torch.Tensor, torch.Tensor, int]:
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
    cfg: DataConfig,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    device: torch.device,
    channels_last: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    cache: DataCache | None = None,
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

    Raises:
        SenetError: the dataset is missing or corrupt, or a size does not fit it.
    """
    _check_sizes(cfg)
    eval_bs = eval_batch_size or batch_size
    train_seed = cfg.data_seed if seed is None else seed
    if cfg.dataset == "imagefolder":
        return _folder_bundle(cfg, batch_size, eval_bs, device, channels_last, train_seed, drop_last, cache)
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
            drop_last=train and drop_last, channels_last=channels_last,
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
