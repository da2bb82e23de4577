"""Small packaged datasets in their real on-disk formats: Fashion-MNIST's idx files and CIFAR's python pickles in
torchvision's layout, for the readers' tests and for the trial keys, which hold a digest of these files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 120, 30  # Fashion-MNIST images written by `write_fashion`


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write `array` as a gzipped idx file: big-endian magic number and dims, then the uint8 bytes."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The four idx files' arrays of a small Fashion-MNIST, by file stem."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def write_fashion(folder: Path, seed: int = 0, arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`folder/<stem>.gz` for each idx file of `arrays` (default: `fashion_arrays(seed)`); returns the arrays."""
    arrays = arrays if arrays is not None else fashion_arrays(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}.gz", array, 2051 if array.ndim == 3 else 2049)
    return arrays


def write_cifar(root: Path, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write CIFAR python pickles in torchvision's layout; returns the train/test images (NCHW) and labels."""
    rng = np.random.default_rng(seed)
    key = "labels" if classes == 10 else "fine_labels"
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    per_file = 20 if classes == 10 else 100
    chunks = {}
    for name in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_file).tolist()
        chunks[name] = (data, labels)
        (folder / name).write_bytes(pickle.dumps({"data": data, key: labels}))
    meta_name, meta_key = ("batches.meta", "label_names") if classes == 10 else ("meta", "fine_label_names")
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(classes)]}))
    train = [chunks[n] for n in files[:-1]]
    return {
        "train_x": np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate([lab for _, lab in train]),
        "test_x": chunks[files[-1]][0].reshape(-1, 3, 32, 32),
        "test_y": np.array(chunks[files[-1]][1]),
    }


def write_damaged_fashion(folder: Path) -> Path:
    """A Fashion-MNIST whose four files are there (a key can be made) but whose training images are a cut gzip
    stream: only reading it fails, in the worker, as a configuration error."""
    write_fashion(folder)
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    return folder
