"""Where the files of a packaged dataset (Fashion-MNIST, CIFAR-10/100) are, and the digest of them a trial key
records: one home for the search order, which the data readers read from and `RunConfig.identity()` hashes, and for
the per-process cache of file digests (`model.weights` files too).

A key holds the data, not the path: a relabelled copy under another `data.root` is another trial, the same files
under two paths are one. Image folders are not hashed (reading all of ImageNet for a key is not practical): their
key holds their absolute path. Synthetic data has no files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from ablations.errors import SenetError
from ablations.paths import DATA_ENV, DEFAULT_DATA

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # `apt-get install dataset-fashion-mnist`
FASHION_FILES = tuple(f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))
# torchvision's layout of the python pickles: the folder under `data.root`, then its files (train, test, meta).
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
}
PACKAGED = ("fashion_mnist", *CIFAR_FILES)  # the datasets whose files count in a trial key by their digest


class DataPlace(Protocol):
    """What finding a dataset's files reads of a `DataSection` (config imports this module, not the other way)."""

    @property
    def dataset(self) -> str: ...
    @property
    def root(self) -> str | None: ...
    @property
    def download(self) -> bool: ...


class MissingData(SenetError):
    """The files of `data` are not where it looks: the readers' one line; a sweep with `data.download` fetches them."""

    def __init__(self, message: str, data: DataPlace) -> None:
        super().__init__(message)
        self.data = data


def data_home() -> Path:
    """The data folder of the results folder a command runs on (`$SENET_ABLATE_DATA`), else ./results/data."""
    return Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else DEFAULT_DATA


@contextlib.contextmanager
def data_under(results: Path) -> Iterator[None]:
    """Downloads and lookups under `results`/data while a command runs (its worker processes inherit it), as an
    absolute path so workers started elsewhere (a Slurm task's node) agree; the previous value comes back after."""
    before = os.environ.get(DATA_ENV)
    os.environ[DATA_ENV] = str((results / "data").absolute())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = before


def download_root(data: DataPlace) -> Path:
    """Where torchvision downloads `data` to, and looks for CIFAR: `data.root`, else the results folder's data/."""
    return Path(data.root) if data.root else data_home()


def _earlier(data: DataPlace, folder: Path, complete: Callable[[Path], bool]) -> Path | None:
    """A download from before the data folder followed --results (./results/data/`folder`, `complete`), when `data`
    has no root of its own and the results folder's data/ lacks it; said once per process."""
    old, home = DEFAULT_DATA / folder, data_home() / folder
    if data.root or old.absolute() == home.absolute() or not complete(old):
        return None
    if old not in _NOTED:
        _NOTED.add(old)
        print(f"note: {data.dataset} read from {old}, a download from before the data folder followed --results; "
              f"move it to {home} to keep it with these results", file=sys.stderr, flush=True)  # fmt: skip
    return old


_NOTED: set[Path] = set()


def _idx_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}.gz" if (folder / f"{stem}.gz").is_file() else folder / stem


def _fetch_hint(data: DataPlace, ask: str) -> str:
    """The download fix: `ask` for it, or (asked for already) that a sweep fetches the files before it plans."""
    return f"a sweep downloads it into {download_root(data)} first (data.download=true)" if data.download else ask


def _fashion(data: DataPlace) -> list[Path]:
    """The four idx files (gzipped or not) from `root` (or its torchvision layout), else Debian's package, else an
    earlier torchvision download."""
    root = Path(data.root) if data.root else None
    raw = Path("FashionMNIST") / "raw"
    tried = [root, root / raw] if root else [DEBIAN_FASHION, data_home() / raw]

    def complete(folder: Path) -> bool:
        return all(_idx_path(folder, stem).is_file() for stem in FASHION_FILES)

    found = next((folder for folder in tried if complete(folder)), None) or _earlier(data, raw, complete)
    if found is not None:
        return [_idx_path(found, stem) for stem in FASHION_FILES]
    hint = _fetch_hint(data, "data.download=true")
    raise MissingData(
        f"data.root: Fashion-MNIST not found in {', '.join(map(str, tried))}; run `apt-get install "
        f"dataset-fashion-mnist`, or --set data.root=DIR (a folder with the idx .gz files), or {hint}",
        data,
    )


def _cifar(data: DataPlace) -> list[Path]:
    base, names = CIFAR_FILES[data.dataset]
    folder = download_root(data) / base
    if not folder.is_dir():
        folder = _earlier(data, Path(base), Path.is_dir) or folder
    if not folder.is_dir():
        hint = _fetch_hint(data, "set data.download=true to fetch it there")
        raise MissingData(
            f"data.root: {data.dataset} not found at {folder}; {hint}, or --set data.root=DIR for the folder that "
            f"holds {base}/",
            data,
        )
    files = [folder / name for name in names]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise MissingData(f"{folder}: incomplete (no {missing.name}); delete it and set data.download=true", data)
    return files


def locate(data: DataPlace) -> list[Path]:
    """The files of a packaged dataset, in a fixed order, where the readers read them; [] for the others.

    Raises:
        MissingData: they are not there (one line naming the places tried and the fixes).
    """
    if data.dataset == "fashion_mnist":
        return _fashion(data)
    if data.dataset in CIFAR_FILES:
        return _cifar(data)
    return []


def digest(data: DataPlace) -> str:
    """`sha256:<hex>` over the bytes of the packaged dataset's files, in `locate`'s order (each file read once per
    process, while its size and modification time stay the same).

    Raises:
        MissingData: the files are not there.
    """
    combined = hashlib.sha256()
    for path in locate(data):
        combined.update(file_sha256(path).encode())
    return f"sha256:{combined.hexdigest()}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, computed once per process per (real path, size, modification time)."""
    real = path.resolve()
    stat = real.stat()
    return _sha256(str(real), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()
