"""CIFAR pipeline: ResNet-56 trained from the `DeviceLoader` of `build_data` on synthetic CIFAR-size data, in
images/s, and the share of the step spent producing batches."""

from __future__ import annotations

import torch

from ablations.config import DataSection
from ablations.data.build import build_data
from benchmarks._report import Check, Result, describe_plan, images_per_s, step_rows, verdict
from benchmarks._steps import STEP, Setup, endless, repeat, timed_step
from benchmarks._timing import Clock, Log, Plan, Summary, interleave, ratios
from senet_core import build_model

DATA_TARGET = 2.0  # percent of the CIFAR training loop spent producing batches


def pipeline(batch: int, images: int, plan: Plan, setup: Setup, log: Log) -> Result:
    """Images/s of ResNet-56 fed by the DeviceLoader (synthetic CIFAR-size data, augmented), and its data cost."""
    data_cfg = DataSection(dataset="synthetic", synthetic_train=images, val_size=5000, synthetic_size=32)
    data = build_data(data_cfg, batch_size=batch, device=setup.device, channels_last=setup.channels_last)
    stream = endless(data.train)

    def produce() -> None:
        next(stream)

    torch.manual_seed(0)
    model = build_model("resnet56", {"model.num_classes": data.num_classes})
    # One model serves both loops, so that they differ only in where each batch comes from.
    variants = {
        "loader + step": timed_step(model, stream.__next__, setup),
        "fixed batch + step": timed_step(model, repeat(next(stream)), setup),
        "loader only": produce,
    }
    samples = interleave(variants, plan, Clock(setup.device), log)
    with_data, without, loader = samples["loader + step"], samples["fixed batch + step"], samples["loader only"]
    share = Summary.of(ratios(loader, with_data)).scaled(100)
    slowdown = Summary.of([100 * (1 - w / d) for w, d in zip(without, with_data, strict=True)])
    result = Result(
        "CIFAR pipeline: ResNet-56 training throughput and the time spent producing batches",
        [
            f"`build_data` synthetic: {data.train_size:,} training images of 32×32 held on the device as uint8; "
            f"the training DeviceLoader (pad-4 random crop + flip, normalisation) at batch {batch}",
            f"step: {STEP}, {setup.describe()}, eager (the engine's default)",
            "data share = time of `loader only` / time of `loader + step`; cross-check: "
            "1 - (`fixed batch + step`) / (`loader + step`), the loop's slowdown from producing its batches",
            describe_plan(plan, samples),
        ],
        [
            *step_rows(samples, batch),
            ("data share of the step", share.format(2, " %")),
            ("cross-check: loop slowdown from producing batches", slowdown.format(2, " %")),
        ],
    )
    target = f"CIFAR pipeline: producing batches < {DATA_TARGET:.0f} % of the step"
    result.checks.append(Check(target, share.format(2, " %"), verdict(share.mean < DATA_TARGET)))
    throughput = images_per_s(Summary.of([batch / s for s in with_data]))
    result.checks.append(Check("CIFAR pipeline throughput (no target)", throughput, "reported"))
    return result
