"""ImageNet-scale trials (`train.devices`): is the ImageFolder path fast enough to feed a ResNet-50 step, and what
does the DDP wrapper cost a step?

Timed side by side in one process: a ResNet-50 training step on this device, the same step through a one-rank
DDP group (gloo on the CPU, NCCL on a GPU: the wrapper's hooks and its all-reduce, with nothing to wait for), and
the training loader of `build_data` on a folder of ImageNet-sized JPEGs (500×375, written here) with 0 and 2 loader
processes. The step's images/s over one loader process's gives the loader processes one device needs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ablations.config import DataSection
from ablations.data.build import build_data
from benchmarks._report import Check, Result, describe_plan, images_per_s, step_rows
from benchmarks._steps import Setup, random_batch, repeat, timed_step
from benchmarks._timing import Clock, Log, Plan, Summary, interleave
from senet_core import build_model

JPEG_SIZE = (500, 375)  # ImageNet's most common training image size
CLASSES = 4
BATCHES = 8  # training batches of the folder: a loader's call is one whole pass (its prefetch cannot hide it)
LOADERS = {0: "ImageFolder loader, 0 workers (a pass)", 2: "ImageFolder loader, 2 workers (a pass)"}


def write_jpegs(root: Path, images: int, seed: int = 0) -> None:
    """`images` JPEGs (quality 90) of smooth colour fields with noise, in CLASSES class folders of train/ and one
    image per class in val/ (the ImageFolder layout `build_data` reads)."""
    rng = np.random.default_rng(seed)
    w, h = JPEG_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    for split, count in (("train", images), ("val", CLASSES)):
        for i in range(count):
            folder = root / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            phase = rng.uniform(0, 6.3, 3)
            base = np.stack([np.sin(xx / (37 + 13 * c) + yy / (53 + 7 * c) + phase[c]) for c in range(3)], -1)
            pixels = np.clip(127 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def _ddp_step(model: torch.nn.Module, batches, setup: Setup):  # type: ignore[no-untyped-def]
    """`timed_step` of the model wrapped as the one rank of a DDP group (the caller started it)."""
    from torch.nn.parallel import DistributedDataParallel

    model = model.to(setup.device).to(memory_format=setup.memory_format())
    cuda = setup.device.type == "cuda"
    return timed_step(DistributedDataParallel(model, device_ids=[setup.device.index or 0] if cuda else None),
                      batches, setup)  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def imagenet_data(size: int, batch: int, plan: Plan, setup: Setup, log: Log) -> Result:
    """Images/s of a ResNet-50 step, plain and as one DDP rank, and of the ImageFolder loader at 0 and 2 workers."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if setup.device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        samples = _timed(size, batch, plan, setup, log)
    finally:
        dist.destroy_process_group()  # nothing after this benchmark trains as a rank
    return _result(samples, size, batch, plan, setup)


def _timed(size: int, batch: int, plan: Plan, setup: Setup, log: Log) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, batch * BATCHES)
        loaders = {}
        for workers in (0, 2):
            cfg = DataSection(dataset="imagefolder", root=str(root), val_size=CLASSES, image_size=size,
                              workers=workers)  # fmt: skip
            data = build_data(cfg, batch_size=batch, device=setup.device, channels_last=setup.channels_last,
                              drop_last=True)  # fmt: skip
            loaders[workers] = data.train
        torch.manual_seed(0)
        plain = build_model("resnet50", {"model.num_classes": 1000})
        wrapped = build_model("resnet50", {"model.num_classes": 1000})
        fixed = random_batch(setup, batch, size, 1000)
        variants = {
            "ResNet-50 step": timed_step(plain, repeat(fixed), setup),
            "ResNet-50 step, one DDP rank": _ddp_step(wrapped, repeat(fixed), setup),
            # A whole pass per call: loader processes prefetch while the other variants run, so timing one batch
            # would time a queue; a new pass starts fetching only when it is asked for.
            LOADERS[0]: lambda: sum(1 for _ in loaders[0]),
            LOADERS[2]: lambda: sum(1 for _ in loaders[2]),
        }
        return interleave(variants, plan, Clock(setup.device), log)


def _result(samples: dict[str, list[float]], size: int, batch: int, plan: Plan, setup: Setup) -> Result:
    images = {name: batch * BATCHES if name in LOADERS.values() else batch for name in samples}
    rate = {name: Summary.of([images[name] / s for s in seconds]) for name, seconds in samples.items()}
    overhead = Summary.of(
        [
            100 * (d / p - 1)
            for d, p in zip(samples["ResNet-50 step, one DDP rank"], samples["ResNet-50 step"], strict=True)
        ]  # fmt: skip
    )
    need = rate["ResNet-50 step"].mean / rate[LOADERS[0]].mean
    result = Result(
        "ImageNet-scale trials: the ImageFolder path against a ResNet-50 step, and the DDP wrapper's cost",
        [
            f"{batch * BATCHES} JPEGs of {JPEG_SIZE[0]}×{JPEG_SIZE[1]} (quality 90) in a temporary ImageFolder; "
            f"`build_data`'s training loader: RandomResizedCrop to {size}, flip, ToTensor, normalisation, batch "
            f"{batch}; 0 workers decodes in this process (one core), 2 in two loader processes; a loader's sample "
            f"is one pass over the {BATCHES} batches (loader processes start fetching a pass only when asked)",
            f"step: ResNet-50 at {size}×{size}, batch {batch}, {setup.describe()}; the DDP variant wraps it as the "
            "one rank of a group (gloo on the CPU, NCCL on a GPU)",
            describe_plan(plan, samples),
        ],
        [
            *step_rows({k: v for k, v in samples.items() if k not in LOADERS.values()}, batch),
            *((f"`{name}`", images_per_s(rate[name])) for name in LOADERS.values()),
            ("DDP wrapper's cost per step (one rank)", overhead.format(1, " %")),
            ("loader processes one device needs (step images/s ÷ one loader core's)", f"{need:.2g}"),
        ],
    )
    result.checks.append(Check("data path images/s, 2 loader processes (no target)",
                               images_per_s(rate[LOADERS[2]]), "reported"))  # fmt: skip
    result.checks.append(Check("one-rank DDP step against the plain step (no target)", overhead.format(1, " %"),
                               "reported"))  # fmt: skip
    return result
