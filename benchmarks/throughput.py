"""The engine's training throughput: images/s of a CIFAR ResNet-20 and ResNet-56 and of SE-ResNet-50, eager and with
the whole step captured as a CUDA graph (`train.compile: graphs`), at two batch sizes each, against the same step
of timm's seresnet50; on the CPU, eager only.

A small CIFAR network is launch-bound when eager: its step is some 550 kernels, and the host takes longer to launch
them than the GPU to run them. The graph replays them in one call; the ratio graphs / eager says how much of the
eager step was launch overhead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks._report import Check, Result, images_per_s, ratio, verdict
from benchmarks._steps import STEP, Setup, random_batch, repeat, timed_step
from benchmarks._timing import Clock, Log, Plan, Summary, interleave
from senet_core import build_model

RESNET20_TARGET = 150_000  # images/s of a CIFAR ResNet-20 step at batch 512 on a GPU (captured)


@dataclass(frozen=True)
class Net:
    """One network of the benchmark: its builder name, input size, classes and the two batch sizes timed."""

    name: str
    size: int
    classes: int
    batches: tuple[int, int]


def nets(device: str, quick: bool) -> list[Net]:
    """What to time: CIFAR nets at 128 and 512, SE-ResNet-50 at ImageNet size (smaller on the CPU)."""
    if device == "cpu":
        small = (32, 64) if quick else (64, 128)
        return [Net("resnet20", 32, 10, small), Net("se_resnet50", 112 if quick else 224, 1000, (4, 8))]
    return [Net("resnet20", 32, 10, (128, 512)), Net("resnet56", 32, 10, (128, 512)),
            Net("se_resnet50", 224, 1000, (64, 128))]  # fmt: skip


def _timm() -> object | None:
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


def throughput(setup: Setup, plan: Plan, log: Log, quick: bool = False) -> Result:
    """Images/s of every net at both batch sizes, eager and (on CUDA) captured, with timm's seresnet50 beside ours."""
    cuda = setup.device.type == "cuda"
    timm = _timm()
    modes = ("eager", "graphs") if cuda else ("eager",)
    result = Result(
        "Engine throughput: images/s of the training step, eager and captured as one CUDA graph",
        [
            f"step: {STEP}, {setup.describe()}; random images resident on the device (the model alone)",
            "`graphs` = `train.compile: graphs`: 3 eager warm-up steps, then the whole step (forward, loss, "
            "backward, fused SGD) captured once and replayed"
            if cuda
            else "eager only on the CPU",
            "se_resnet50 in timm's layout (stride on the 3×3 conv) beside `timm.create_model('seresnet50')`"
            + ("" if timm else " — timm not installed, its rows are missing"),
        ],
    )
    for net in nets(setup.device.type, quick):
        for batch in net.batches:
            data = repeat(random_batch(setup, batch, net.size, net.classes))
            variants: dict[str, Callable[[], None]] = {}
            for mode in modes:
                variants[f"{net.name} {mode}"] = _step(lambda n=net: _ours(n), data, setup, mode)
                if net.name == "se_resnet50" and timm is not None:
                    variants[f"timm seresnet50 {mode}"] = _step(lambda: timm.create_model("seresnet50"), data,
                                                                setup, mode)  # fmt: skip
            log(f"  {net.name} at {net.size}×{net.size}, batch {batch}")
            samples = interleave(variants, plan, Clock(setup.device), log)
            for name, seconds in samples.items():
                rate = Summary.of([batch / s for s in seconds])
                result.rows.append((f"`{name}`, batch {batch}", images_per_s(rate)))
            if cuda:
                r = ratio(samples, f"{net.name} eager", f"{net.name} graphs")
                result.rows.append((f"speed-up graphs / eager, {net.name}, batch {batch}", r.format(2)))
            if net.name == "se_resnet50" and timm is not None:
                for mode in modes:
                    r = ratio(samples, f"se_resnet50 {mode}", f"timm seresnet50 {mode}")
                    result.checks.append(Check(f"ours / timm seresnet50 step ≤ 1.0 ({mode}, batch {batch})",
                                               r.format(3), verdict(r.mean <= 1.0)))  # fmt: skip
            if net.name == "resnet20" and batch == 512 and cuda:
                rate = Summary.of([batch / s for s in samples["resnet20 graphs"]])
                result.checks.append(Check(f"CIFAR ResNet-20 step at batch 512 ≥ {RESNET20_TARGET:,} images/s",
                                           images_per_s(rate), verdict(rate.mean >= RESNET20_TARGET)))  # fmt: skip
    if not cuda:
        why = "not measured — no GPU on this machine"
        result.checks.append(Check(f"CIFAR ResNet-20 step at batch 512 ≥ {RESNET20_TARGET:,} images/s", "—", why))
    result.settings.append(
        f"timing per net and batch: {plan.warmup} warm-up steps per variant (a graph's warm-up and capture among "
        f"them), then {plan.min_rounds} to {plan.max_rounds} rounds of {plan.steps} steps, the variants interleaved"
    )
    return result


def _ours(net: Net) -> nn.Module:
    options = {"model.num_classes": net.classes}
    if net.name == "se_resnet50":
        options["model.stride_layout"] = "v1.5"  # timm's layout, so both sides are the same network
    return build_model(net.name, options)


def _step(make: Callable[[], nn.Module], data: Callable, setup: Setup, mode: str) -> Callable[[], None]:
    torch.manual_seed(0)
    return timed_step(make(), data, setup, graphs=mode == "graphs")
