"""A packed worker's half of `--trials-per-gpu auto`: it probes each configuration's memory on its GPU before
training it there, and reports each epoch's images/s; `ablations.sweep.packing` decides from both.

A probe takes a few training steps of the trial's own network, optimizer and step (`train_step`) at its batch size
and one evaluation batch, on random images of its input shape, then frees what it held. The CUDA context is what the
process holds outside the caching allocator once those steps loaded their kernels: measured by the GPU's first
probe, while its worker is alone there (packing starts one worker per GPU and adds none before a probe), and taken
from that probe by the later ones, whose GPU is shared by then.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablations.config import RunConfig
from ablations.costs import input_shape
from ablations.sweep.ledger import process_start
from ablations.sweep.packing import RETIRE, Probe, Rate, probe_path, read_probes, write_probe, write_rate
from ablations.training.engine import Callback, make_autocast, make_optimizer, pick_device
from ablations.training.steps import evaluate, train_step
from senet_core import build_model

STEPS = 3  # training steps of a probe: the first allocates the gradients, the second the momentum buffers
RETIRING = threading.Event()  # set by the controller's `RETIRE`: the worker leaves before its next claim


def listen_for_retire() -> None:
    """Let `RETIRE` set `RETIRING` (from the worker's `main`: only the main thread installs handlers)."""
    signal.signal(RETIRE, lambda _signum, _frame: RETIRING.set())


def probe_steps(cfg: RunConfig, device: torch.device, steps: int = STEPS) -> float:
    """`steps` training steps of `cfg` as the engine takes them, then one evaluation batch, on random images; returns
    the last training loss.

    Note:
        The network trains eager even where `train.compile` compiles it or captures it: fused kernels hold less, so
        the eager peak errs on the safe side (a captured step's memory pool holds about what an eager step does).
        The engine seeds afresh before it builds a trial, so these draws change nothing of it.
    """
    t = cfg.train
    channels, size, classes = input_shape(cfg)
    layout = torch.channels_last if t.channels_last else torch.contiguous_format
    model = build_model(cfg.model.name, cfg.model_options(channels, classes)).to(device, memory_format=layout)
    optimizer = make_optimizer(model, t, device)  # the engine's: fused on a GPU
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    autocast = make_autocast(t, device)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, channels, size, size, device=device).contiguous(memory_format=layout)
        return x, torch.randint(classes, (n,), device=device)

    x, y = batch(t.batch_size)
    model.train()
    for _ in range(steps):
        _, loss = train_step(model, optimizer, criterion, x, y, autocast)
    evaluate(model, [batch(t.eval_batch_size)], autocast)
    return float(loss.detach())


def measure(cfg: RunConfig) -> tuple[float, float, float]:
    """A probe of `cfg` on this process's CUDA device: (peak reserved, held outside the caching allocator, total) MB.
    What it reserved is given back to the device before it returns."""
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as the engine trains: cuDNN's autotuning workspaces count too
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    probe_steps(cfg, device)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    held = total - free - torch.cuda.memory_reserved(device)  # alone on the device: this process's CUDA context
    peak = torch.cuda.max_memory_reserved(device)
    torch.cuda.empty_cache()
    return peak / 2**20, held / 2**20, total / 2**20


class Packed(Callback):
    """A packed worker's probes and reports, on the GPU `gpu` of the sweep `manifest_id`."""

    def __init__(self, results: Path, manifest_id: str, gpu: str) -> None:
        self.results, self.manifest_id, self.gpu = results, manifest_id, gpu
        self.pid = os.getpid()
        self.start = process_start(self.pid)
        self.since: float | None = None  # when this worker's first epoch began
        self.began = 0.0  # when the epoch under way began

    def probe(self, cfg: RunConfig, config_hash: str) -> None:
        """Probe `cfg` unless it was probed on this GPU; a trial that stays on the CPU needs none."""
        if probe_path(self.results, self.manifest_id, self.gpu, config_hash).exists():
            return
        if pick_device(cfg.train.device).type == "cuda":
            self.record(config_hash, *measure(cfg))

    def record(self, config_hash: str, peak_mb: float, held_mb: float, total_mb: float) -> Probe:
        """Write the probe of one configuration: the context this worker holds when it is the GPU's first probe,
        else the one that probe measured (`held_mb` then holds other workers' memory too)."""
        earlier = [p.context_mb for p in read_probes(self.results, self.manifest_id) if p.gpu == self.gpu]
        context = max(earlier) if earlier else held_mb
        probe = Probe(self.gpu, config_hash, context, peak_mb, total_mb)
        write_probe(self.results, self.manifest_id, probe)
        return probe

    def on_start(self, info: dict[str, Any]) -> None:
        self.began = time.time()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        now = time.time()
        if self.since is None:
            self.since = self.began
        rate = Rate(self.pid, self.start, self.gpu, self.since, self.began, now, metrics["epoch_images_per_s"])
        write_rate(self.results, self.manifest_id, rate)
        self.began = now
