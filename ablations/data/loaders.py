"""Batches for training and evaluation: small datasets held on the training device as uint8 tensors, augmented
there with a pad-4 crop and flip (as airbench does), and image folders streamed through a DataLoader; both with a
seeded order and seeded augmentation per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 4  # pixels of zero padding before the random crop (He et al. 2016, §4.2)


def _mix(seed: int, *parts: int) -> int:
    # Plain seed + epoch would make run seed 1, epoch 0 replay run seed 0, epoch 1; SeedSequence keeps them apart.
    return int(np.random.SeedSequence((seed % 2**64, *parts)).generate_state(1, np.uint64)[0])


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
        shard: (rank, world): this rank's contiguous `batch_size / world` images of every batch of `batch_size`
            (one trial across `world` devices: together the ranks see exactly the single-device batches).
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
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        check_shard(batch_size, drop_last, shard)
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need uint8 NCHW images and one label each, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(images.device, torch.int64)
        self.batch_size, self.train, self.augment, self.drop_last = batch_size, train, augment, drop_last
        self.seed, self.epoch, self.channels_last, self.dtype = seed, 0, channels_last, dtype
        self.start = 0  # the next pass's first batch (`set_epoch`)
        self.rank, self.world = shard
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale = (1 / (255 * self.std)).view(1, -1, 1, 1).to(images.device)
        self._shift = (-self.mean / self.std).view(1, -1, 1, 1).to(images.device)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next pass use the order and augmentation of `epoch`, beginning at its batch `start` (a run
        resumed mid-epoch: the batches after the checkpoint's, exactly as the uninterrupted pass would give them)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        self.epoch += 1
        first, self.start = self.start, 0
        n, device = len(self.images), self.images.device
        # Drawn on the CPU, so a run gives the same batches on any device.
        order = (torch.randperm(n, generator=gen) if self.train else torch.arange(n)).to(device)
        shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen).to(device) if self.augment else None
        flips = (torch.rand(n, generator=gen) < 0.5).to(device) if self.augment else None
        per = self.batch_size // self.world
        for start in range(first * self.batch_size, len(self) * self.batch_size, self.batch_size):
            part = slice(start + self.rank * per, start + (self.rank + 1) * per)
            x = self.images[order[part]]
            if shifts is not None and flips is not None:
                x = _crop_flip(x, shifts[part], flips[part])
            x = torch.addcmul(self._shift, x.float(), self._scale)
            yield _to_output(x, self.dtype, self.channels_last), self.labels[order[part]]


def check_shard(batch_size: int, drop_last: bool, shard: tuple[int, int]) -> None:
    """Raise ValueError unless `shard` = (rank, world) splits every batch of `batch_size` evenly: equal parts, and
    no short last batch (a rank with fewer images would weigh its gradients like the others')."""
    rank, world = shard
    if not 0 <= rank < world or batch_size % world or (world > 1 and not drop_last):
        raise ValueError(f"shard {shard} does not split batches of {batch_size} evenly (drop_last={drop_last})")


class _EpochOrder(Sampler[tuple[int, int]]):
    """(epoch, index) pairs in the order of one epoch: a permutation seeded by (seed, epoch) when shuffling, the
    stored order otherwise. The epoch travels with every index, so persistent worker processes need no message.
    Each pass advances the epoch by one, as DeviceLoader's do. With `shard` = (rank, world) it yields this rank's
    contiguous part of every batch of `batch` in that order (the last short batch dropped), a DistributedSampler
    that keeps the single-device batches."""

    def __init__(self, n: int, shuffle: bool, seed: int, batch: int = 1, shard: tuple[int, int] = (0, 1)) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.batch, (self.rank, self.world) = batch, shard
        self.skip = 0  # indices of the next pass left out at its start (a run resumed mid-epoch)

    def __len__(self) -> int:
        return self.n if self.world == 1 else self.n // self.batch * (self.batch // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        skip, self.skip = self.skip, 0
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        if self.world > 1:
            full = self.n // self.batch * self.batch
            order = order[:full].view(-1, self.world, self.batch // self.world)[:, self.rank].reshape(-1)
        return ((epoch, i) for i in order[skip:].tolist())


class _Seeded(Dataset):
    """`dataset[index]` with torch's generator seeded by (seed, epoch, index) while it loads: torchvision's random
    transforms draw from that generator, so an image gets the same crop and flip in whichever worker process
    loads it, however many there are. The caller's generator state is restored afterwards (with no workers the
    loading runs in the training process)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, index = item
        with torch.random.fork_rng(devices=()):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.dataset[index]


class FolderLoader:
    """A DataLoader over an image folder that yields device batches and has `set_epoch`, like DeviceLoader.

    The shuffle order is a function of (seed, epoch) and each image's random crop and flip a function of (seed,
    epoch, its index), whatever `workers` is: a resumed run, or one with another number of loader processes,
    trains on the same batches; a rank of `shard` (see DeviceLoader) its part of each of them.
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
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        check_shard(batch_size, drop_last, shard)
        self.device, self.seed, self.channels_last, self.dtype = device, seed, channels_last, dtype
        self.batch_size, self.train = batch_size, train
        self.mean, self.std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self._order = _EpochOrder(len(dataset), train, seed, batch_size, shard)  # type: ignore[arg-type]
        self._loader = DataLoader(
            _Seeded(dataset, seed),
            batch_size // shard[1],
            sampler=self._order,
            # Its own generator for the workers' base seed (unused by the transforms): drawing it from torch's
            # global generator would move the training process's random state every epoch.
            generator=torch.Generator(),
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    @property
    def epoch(self) -> int:
        return self._order.epoch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next pass use the order and augmentation of `epoch`, beginning at its batch `start` (the images
        before it are never loaded)."""
        self._order.epoch, self._order.skip = epoch, start * (self.batch_size // self._order.world)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            yield _to_output(x, self.dtype, self.channels_last), y.to(self.device, non_blocking=True)


Loader = DeviceLoader | FolderLoader


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
