"""Ours against timm: our SE-ResNet-50 in timm's layout against `timm.create_model("seresnet50")`, parameters and
train-step time (reported as not measured when timm is not installed)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._report import Check, Result, describe_plan, ratio, step_rows, verdict
from benchmarks._steps import STEP, Setup, random_batch, repeat, timed_step
from benchmarks._timing import Clock, Log, Plan, interleave
from senet_core import build_model, count_params

TIMM_TARGET = 1.0  # our SE-ResNet-50 / timm's seresnet50 train-step time
SERESNET50_PARAMS = 28_088_024  # timm seresnet50 = SE-ResNet-50, r=16, FC biases (REFERENCE §4)


def versus_timm(size: int, batch: int, plan: Plan, setup: Setup, log: Log, compiled: bool = True) -> Result:
    """Our SE-ResNet-50 in timm's layout against timm's seresnet50: parameters and train-step time."""
    title = "Ours against timm: se_resnet50 (stride layout v1.5) / timm seresnet50 train step"
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        why = "not measured — timm not installed (`pip install -e '.[bench]'`)"
        return Result(title, [], checks=[Check(f"ours / timm step ≤ {TIMM_TARGET}", "—", why)])

    def ours() -> nn.Module:
        # timm puts the stride on the 3×3 conv, keeps the FC biases and rounds C/r to multiples of 8, which for
        # ResNet-50's widths equals the paper's floor(C/r): the same network as timm's.
        return build_model("se_resnet50", {"model.stride_layout": "v1.5"})

    def theirs() -> nn.Module:
        return timm.create_model("seresnet50")

    counts = count_params(ours()), count_params(theirs())
    same = counts[0] == counts[1] == SERESNET50_PARAMS
    log(f"  parameters: ours {counts[0]:,}, timm {counts[1]:,} ({'equal' if same else 'NOT EQUAL'})")
    data = repeat(random_batch(setup, batch, size, 1000))

    def step(make: Callable[[], nn.Module], *, compile: bool = False, graphs: bool = False) -> Callable[[], None]:
        torch.manual_seed(0)
        return timed_step(make(), data, setup, compile=compile, graphs=graphs)

    cuda = setup.device.type == "cuda"
    variants = {"ours": step(ours), "timm": step(theirs)}
    pairs = [("eager", "ours", "timm")]
    if cuda:
        variants |= {"ours graphs": step(ours, graphs=True), "timm graphs": step(theirs, graphs=True)}
        pairs.append(("CUDA graphs", "ours graphs", "timm graphs"))
    if cuda and compiled:
        torch.compiler.reset()
        variants |= {"ours compiled": step(ours, compile=True), "timm compiled": step(theirs, compile=True)}
        pairs.append(("compiled", "ours compiled", "timm compiled"))
    samples = interleave(variants, plan, Clock(setup.device), log)
    result = Result(
        title,
        [
            f"{batch} random images of {size}×{size} resident on the device, 1000 classes",
            f"step: {STEP}, {setup.describe()}",
            f"timm {timm.__version__} `create_model('seresnet50')` with default arguments"
            + ("; `graphs` = the whole step captured as one CUDA graph" if cuda else "")
            + ("; `compiled` = torch.compile (mode default)" if cuda and compiled else ""),
            describe_plan(plan, samples),
        ],
        [("parameters, ours / timm", f"{counts[0]:,} / {counts[1]:,}"), *step_rows(samples, batch)],
    )
    params = f"{counts[0]:,} / {counts[1]:,}"
    result.checks.append(Check(f"parameters ours / timm both {SERESNET50_PARAMS:,}", params, verdict(same)))
    for label, num, den in pairs:
        r = ratio(samples, num, den)
        result.rows.append((f"ratio {num} / {den}", r.format(3)))
        status = verdict(r.mean <= TIMM_TARGET)
        if abs(r.mean - 1) <= r.std:
            status += " (the difference from 1 is within one std of the round-to-round spread)"
        result.checks.append(Check(f"ours / timm step ≤ {TIMM_TARGET} ({label})", r.format(3), status))
    return result
