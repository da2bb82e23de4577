"""Tests for ablations.data on small files written in the datasets' real on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image
from torchvision.datasets import cifar

from ablations.config import DataSection
from ablations.data.build import build_data, channel_stats, split_indices
from ablations.data.loaders import DeviceLoader, _crop_flip
from ablations.datafiles import DEBIAN_FASHION
from ablations.errors import SenetError
from tests._support.datasets import N_TEST, N_TRAIN, write_cifar, write_fashion, write_idx

CPU = torch.device("cpu")


@pytest.fixture
def idx_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_fashion(tmp_path)


@pytest.fixture
def lenient_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision md5-checks the real CIFAR pickles; generated ones cannot match, so check only that they exist.
    real = cifar.check_integrity
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: real(path))


@pytest.fixture
def cifar_root(tmp_path: Path, lenient_md5: None) -> tuple[Path, dict[int, dict[str, np.ndarray]]]:
    return tmp_path, {10: write_cifar(tmp_path, 10), 100: write_cifar(tmp_path, 100)}


@pytest.fixture
def image_folder_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for part, count in (("train", 6), ("val", 2)):
        for cls in ("ant", "bee", "cat"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / part / cls / f"{i}.png")
    return tmp_path


def fashion(root: Path, **options: object) -> DataSection:
    return DataSection(root=str(root), val_size=20, **options)


def batches(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


# --- Fashion-MNIST (idx files) ---


def test_fashion_round_trips_exactly(idx_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, arrays = idx_root
    cfg = fashion(root, augment=False)
    data = build_data(cfg, batch_size=32, device=CPU)
    train_idx, val_idx, _ = split_indices(N_TRAIN, N_TEST, cfg)
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"])[:, None]
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long()
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("fashion_mnist", 10, 1, 28)
    assert (data.train_size, data.val_size, data.test_size) == (100, 20, 30)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert torch.equal(data.train.images, images[train_idx]) and torch.equal(data.train.labels, labels[train_idx])
    assert torch.equal(data.val.images, images[val_idx]) and torch.equal(data.val.labels, labels[val_idx])
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


def test_fashion_batches_are_normalised_with_train_statistics(idx_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = build_data(fashion(idx_root[0]), batch_size=32, eval_batch_size=7, device=CPU)
    pixels = data.train.images.double() / 255
    assert data.train.mean.item() == pytest.approx(pixels.mean().item(), abs=1e-6)
    assert data.train.std.item() == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-6)
    x, y = next(iter(data.test))
    expected = (data.test.images[:7].float() / 255 - data.train.mean) / data.train.std
    assert x.dtype == torch.float32 and x.shape == (7, 1, 28, 28)
    torch.testing.assert_close(x, expected.view(7, 1, 28, 28), rtol=1e-5, atol=1e-5)
    assert torch.equal(y, data.test.labels[:7])
    assert len(data.test) == 5 and sum(len(b[1]) for b in data.test) == 30


def test_fashion_found_in_torchvision_layout(tmp_path: Path) -> None:
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    assert build_data(fashion(tmp_path), batch_size=8, device=CPU).test_size == N_TEST


def test_missing_fashion_names_the_paths_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(SenetError, match="apt-get install dataset-fashion-mnist") as err:
        build_data(fashion(tmp_path / "nowhere"), batch_size=8, device=CPU)
    assert str(tmp_path / "nowhere") in str(err.value) and "data.download=true" in str(err.value)
    assert "\n" not in str(err.value)


def test_fashion_download_goes_through_torchvision_into_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(root: str, download: bool) -> None:  # stands in for torchvision.datasets.FashionMNIST
        calls.append((root, download))
        write_fashion(Path(root) / "FashionMNIST" / "raw")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    data = build_data(fashion(tmp_path / "fetched", download=True), batch_size=8, device=CPU)
    assert calls == [(str(tmp_path / "fetched"), True)] and data.test_size == N_TEST


@pytest.mark.parametrize("damage", ["gzip_stream", "payload", "magic"])
def test_damaged_idx_file_is_a_senet_error_naming_it(idx_root: tuple[Path, dict[str, np.ndarray]], damage: str) -> None:
    root, arrays = idx_root
    path = root / "train-images-idx3-ubyte.gz"
    if damage == "gzip_stream":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "payload":
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">4I", 2051, N_TRAIN, 28, 28) + b"\0" * 1000)
    else:
        write_idx(path, arrays["train-images-idx3-ubyte"], 2049)
    with pytest.raises(SenetError, match="train-images-idx3-ubyte.gz"):
        build_data(fashion(root), batch_size=8, device=CPU)


def test_debian_fashion_mnist_loads() -> None:
    if not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    cfg = DataSection(train_subset=64, val_subset=32, test_subset=16)
    data = build_data(cfg, batch_size=32, device=CPU)
    assert (data.train_size, data.val_size, data.test_size, data.image_size) == (64, 32, 16, 28)
    # The counts behind the subsets: 60000 training images (55000 + 5000 held out) and 10000 test images.
    train_idx, val_idx, test_idx = split_indices(60000, 10000, cfg)
    assert max(train_idx.max(), val_idx.max()) < 60000 and test_idx.max() < 10000
    full = build_data(DataSection(augment=False), batch_size=10000, device=CPU)
    assert (full.train_size, full.val_size, full.test_size) == (55000, 5000, 10000)
    assert sorted(full.test.labels.bincount().tolist()) == [1000] * 10


# --- CIFAR (python pickles read by torchvision) ---


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_round_trips_exactly(cifar_root: tuple[Path, dict], classes: int) -> None:
    root, written = cifar_root
    cfg = DataSection(dataset=f"cifar{classes}", root=str(root), val_size=10, augment=False)
    data = build_data(cfg, batch_size=16, device=CPU)
    train_idx, val_idx, _ = split_indices(100, len(written[classes]["test_y"]), cfg)
    arrays = {k: torch.from_numpy(v) for k, v in written[classes].items()}
    assert (data.num_classes, data.in_channels, data.image_size, data.train_size) == (classes, 3, 32, 90)
    assert torch.equal(data.train.images, arrays["train_x"][train_idx])
    assert torch.equal(data.val.labels, arrays["train_y"][val_idx].long())
    assert torch.equal(data.test.images, arrays["test_x"]) and torch.equal(data.test.labels, arrays["test_y"].long())


def test_missing_cifar_names_the_path_and_the_download_flag(tmp_path: Path) -> None:
    with pytest.raises(SenetError, match="data.download=true") as err:
        build_data(DataSection(dataset="cifar10", root=str(tmp_path)), batch_size=8, device=CPU)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


def test_cifar_failing_md5_is_a_senet_error(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10)
    with pytest.raises(SenetError, match="incomplete or corrupt"):
        build_data(DataSection(dataset="cifar10", root=str(tmp_path), val_size=10), batch_size=8, device=CPU)


def test_corrupt_cifar_pickle_is_a_senet_error(cifar_root: tuple[Path, dict]) -> None:
    root, _ = cifar_root
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(SenetError, match="cifar-10-batches-py"):
        build_data(DataSection(dataset="cifar10", root=str(root), val_size=10), batch_size=8, device=CPU)


# --- Image folders ---


def test_image_folder_splits_train_and_uses_val_as_test(image_folder_root: Path) -> None:
    cfg = DataSection(dataset="imagefolder", root=str(image_folder_root), val_size=3, image_size=8, workers=0)
    data = build_data(cfg, batch_size=4, eval_batch_size=6, device=CPU, channels_last=True)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 8)
    assert (data.train_size, data.val_size, data.test_size) == (15, 3, 6)
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
    data.train.set_epoch(2)
    first = [b[1] for b in data.train]
    data.train.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, [b[1] for b in data.train], strict=True))
    test_labels = torch.cat([b[1] for b in data.test])
    assert sorted(test_labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(data.val) == 1 and next(iter(data.val))[0].shape == (3, 3, 8, 8)


def test_image_folder_errors_name_the_folder(image_folder_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SenetError, match="data.root: required"):
        build_data(DataSection(dataset="imagefolder", workers=0), batch_size=4, device=CPU)
    (image_folder_root / "val" / "cat").rename(image_folder_root / "val" / "dog")
    with pytest.raises(SenetError, match="different class folders"):
        build_data(DataSection(dataset="imagefolder", root=str(image_folder_root)), batch_size=4, device=CPU)
    with pytest.raises(SenetError, match=str(tmp_path / "empty")):
        build_data(DataSection(dataset="imagefolder", root=str(tmp_path / "empty")), batch_size=4, device=CPU)


def test_image_folder_crops_depend_on_seed_epoch_and_image_not_on_the_workers(tmp_path: Path) -> None:
    """Item 16 (issue 19): the random crops ran in DataLoader workers seeded by their number, so `data.workers`
    changed what a trial trained on (and a resumed run saw other crops)."""
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / part / cls / f"{i}.png"
                )

    def epoch(workers: int, number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = DataSection(dataset="imagefolder", root=str(tmp_path), val_size=2, image_size=6, workers=workers)
        loader = build_data(cfg, batch_size=4, device=CPU, seed=3).train
        loader.set_epoch(number)
        return list(loader)

    def same(a: list, b: list) -> bool:
        pairs = zip(a, b, strict=True) if len(a) == len(b) else None
        return pairs is not None and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in pairs)

    first = epoch(0, 0)
    assert same(first, epoch(2, 0)) and same(first, epoch(1, 0))
    assert not same(first, epoch(0, 1))
    assert same(epoch(2, 1), epoch(0, 1))
    for workers in (0, 2):  # without set_epoch, each pass is the next epoch
        cfg = DataSection(dataset="imagefolder", root=str(tmp_path), val_size=2, image_size=6, workers=workers)
        loader = build_data(cfg, batch_size=4, device=CPU, seed=3).train
        state = torch.get_rng_state()
        assert same(list(loader), first) and same(list(loader), epoch(0, 1))
        assert torch.equal(torch.get_rng_state(), state)  # the training process's random state is left alone


# --- Splits and subsets ---


def test_validation_split_is_disjoint_and_seeded() -> None:
    cfg = DataSection(val_size=50)
    train, val, test = split_indices(500, 80, cfg)
    assert len(train) == 450 and len(val) == 50 and torch.equal(test, torch.arange(80))
    assert sorted(torch.cat([train, val]).tolist()) == list(range(500))
    again = split_indices(500, 80, cfg)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, split_indices(500, 80, DataSection(val_size=50, data_seed=1))[1])


def test_subsets_take_the_head_of_each_split() -> None:
    full = split_indices(500, 80, DataSection(val_size=50))
    train, val, test = split_indices(500, 80, DataSection(val_size=50, train_subset=30, val_subset=5, test_subset=9))
    assert torch.equal(train, full[0][:30]) and torch.equal(val, full[1][:5])
    assert len(test) == 9 and len(set(test.tolist())) == 9 and int(test.max()) < 80


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"val_size": 500}, "data.val_size"),
        ({"train_subset": 451}, "data.train_subset"),
        ({"val_subset": 51}, "data.val_subset"),
        ({"test_subset": 81}, "data.test_subset"),
    ],
)
def test_bad_sizes_name_the_field(options: dict[str, int], field: str) -> None:
    with pytest.raises(SenetError, match=field):
        split_indices(500, 80, DataSection(**{"val_size": 50, **options}))


def test_bad_val_size_through_build_data(idx_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(SenetError, match=r"data\.val_size: 5000 .* allowed: 1\.\.119"):
        build_data(DataSection(root=str(idx_root[0])), batch_size=8, device=CPU)
    with pytest.raises(pydantic.ValidationError, match="workers"):  # refused by the config, before any loader
        fashion(idx_root[0], workers=-1)


def test_run_seed_changes_the_order_but_not_the_split(idx_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    one, two = (build_data(fashion(idx_root[0]), batch_size=100, device=CPU, seed=s) for s in (1, 2))
    assert torch.equal(one.train.images, two.train.images) and torch.equal(one.val.labels, two.val.labels)
    assert not torch.equal(next(iter(one.train))[1], next(iter(two.train))[1])


def test_config_refuses_unknown_fields_and_datasets() -> None:
    with pytest.raises(pydantic.ValidationError):
        DataSection(valsize=10)
    with pytest.raises(pydantic.ValidationError):
        DataSection(dataset="mnist")


# --- DeviceLoader: order, augmentation, output format ---


def labelled_loader(n: int = 64, **options: object) -> DeviceLoader:
    """Images that are constant at 10 * (label + 1), so any pixel of a batch tells its label."""
    labels = torch.arange(n) % 10
    images = (10 * (labels + 1)).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 12, 12).contiguous()
    return DeviceLoader(images, labels, 16, mean=[0.0] * 3, std=[1 / 255] * 3, **options)


def test_augmentation_keeps_shapes_and_labels_aligned() -> None:
    loader = labelled_loader(train=True, augment=True, seed=3)
    seen_padding = 0
    for x, y in loader:
        assert x.shape == (16, 3, 12, 12)
        # std=1/255 and mean=0 give back raw pixel values: the crop's pixels, or 0 where it reaches the padding.
        assert torch.equal(x.amax(dim=(1, 2, 3)), 10.0 * (y + 1))
        assert set(x.unique().tolist()) <= {0.0} | set((10.0 * (y + 1)).tolist())
        seen_padding += int((x == 0).any(dim=(1, 2, 3)).sum())
    assert seen_padding > 32  # 8 of 9 offsets per axis reach into the padding


def test_crop_flip_matches_a_per_image_reference() -> None:
    x = torch.randint(0, 256, (20, 3, 9, 7), dtype=torch.uint8)
    shifts = torch.randint(0, 9, (20, 2))
    flips = torch.rand(20) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    expected = [p[:, r : r + 9, c : c + 7] for p, (r, c) in zip(padded, shifts.tolist(), strict=True)]
    expected = torch.stack([e.flip(-1) if f else e for e, f in zip(expected, flips, strict=True)])
    assert torch.equal(_crop_flip(x, shifts, flips), expected)


def test_same_seed_and_epoch_give_the_same_batches() -> None:
    loader = labelled_loader(train=True, augment=True, seed=7)
    loader.set_epoch(5)
    first = batches(loader)
    second = batches(loader)  # epoch 6 follows on its own
    loader.set_epoch(5)
    again = batches(loader)
    other = batches(labelled_loader(train=True, augment=True, seed=7))  # a fresh loader at epoch 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.cat([b[1] for b in second]))
    assert not torch.equal(torch.cat([b[0] for b in first]), torch.cat([b[0] for b in other]))


def test_eval_loader_keeps_order_and_drop_last_counts() -> None:
    loader = labelled_loader(train=False)
    assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(64) % 10)
    assert len(labelled_loader(50, train=True)) == 4 and len(labelled_loader(50, train=True, drop_last=True)) == 3
    assert [len(y) for _, y in labelled_loader(50, train=True, drop_last=True)] == [16, 16, 16]


def test_output_dtype_and_channels_last() -> None:
    x, _ = next(iter(labelled_loader(train=False, channels_last=True, dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_channel_stats_are_exact() -> None:
    images = torch.randint(0, 256, (40, 3, 5, 6), dtype=torch.uint8)
    mean, std = channel_stats(images)
    pixels = images.double().permute(1, 0, 2, 3).reshape(3, -1) / 255
    torch.testing.assert_close(mean, pixels.mean(1).float())
    torch.testing.assert_close(std, pixels.std(1, unbiased=False).float())


# --- Synthetic ---


def test_synthetic_is_seeded_and_learnable() -> None:
    cfg = DataSection(dataset="synthetic", val_size=64, synthetic_train=512, synthetic_test=256, augment=False)
    data = build_data(cfg, batch_size=64, device=CPU)
    assert (data.num_classes, data.in_channels, data.image_size, data.train_size) == (10, 3, 32, 448)
    assert torch.equal(data.test.images, build_data(cfg, batch_size=64, device=CPU).test.images)
    # Nearest class mean, fitted on train: a tiny net has at least this much signal to find.
    train_x, test_x = data.train.images.flatten(1).float(), data.test.images.flatten(1).float()
    centres = torch.stack([train_x[data.train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(test_x, centres).argmin(1) == data.test.labels).float().mean()
    assert accuracy > 0.95
