"""Latency of a trial's network, measured alone: forward (or forward + backward) time of one batch at the trial's
precision and memory layout, on a device no other trial uses while it is timed, the median of timed repeats after
a warm-up. Measurements are cached per architecture, batch, mode and device (`<results>/cache/latency.json`), so a
design is timed once per device whatever seeds or studies train it. The throughput of packed trials
(`images_per_s`) is no latency: they share the device."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ablations.config import RunConfig
from ablations.costs import input_shape
from ablations.training.engine import make_autocast
from senet_core import build_model

WARMUP = 5  # untimed batches first (cuDNN autotuning, allocator, caches)
REPEATS = 20  # timed batches; their median is the latency
CACHE = Path("cache") / "latency.json"


def device_name(device: torch.device) -> str:
    """What the cache tells devices apart by: the GPU's model, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}t"


def key(cfg: RunConfig, batch: int, backward: bool, device: torch.device) -> str:
    """The cache key: the network (its name and options), the batch, the mode, precision, layout and device."""
    channels, _, classes = input_shape(cfg)
    arch = json.dumps([cfg.model.name, cfg.model_options(channels, classes)], sort_keys=True, default=str)
    mode = "forward+backward" if backward else "forward"
    return (f"{arch}|batch {batch}|{mode}|{cfg.train.precision}|channels_last={bool(cfg.train.channels_last)}|"
            f"{device_name(device)}")  # fmt: skip


def time_batch(cfg: RunConfig, batch: int, backward: bool, device: torch.device) -> float:
    """Milliseconds per batch of `cfg`'s network on `device`: the median of `REPEATS` after `WARMUP`."""
    channels, size, classes = input_shape(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, cfg.model_options(channels, classes))
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout).train(backward)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=layout)
    autocast = make_autocast(cfg.train, device)
    times = []
    for i in range(WARMUP + REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if backward:
            with autocast():
                out = model(x)
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def latency_ms(cfg: RunConfig, results: Path, batch: int, backward: bool, device: torch.device) -> float:
    """`cfg`'s latency on `device`, from the cache or measured now (and cached). The caller holds the device alone
    (on a GPU, its exclusive permit). The cache is written whole through a temporary file, under a lock."""
    path = results / CACHE
    k = key(cfg, batch, backward, device)
    with _locked(path):
        cached = json.loads(path.read_text()) if path.exists() else {}
        if k in cached:
            return float(cached[k])
        value = time_batch(cfg, batch, backward, device)
        cached[k] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, sort_keys=True, indent=1))
        tmp.replace(path)
    return value
