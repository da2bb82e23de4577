"""SE overhead per training step: `se_<base>` over `<base>` (ResNet-50 at ImageNet size, ResNet-56 on CIFAR), eager,
and on CUDA also compiled and with the fused SE epilogue."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from benchmarks._report import Check, Result, describe_plan, ratio, step_rows, verdict
from benchmarks._steps import STEP, Setup, fuse_se_epilogue, random_batch, repeat, scale_add_relu, timed_step
from benchmarks._timing import Clock, Log, Plan, interleave
from senet_core import build_model

SE_TARGET = 1.05  # SE-ResNet-50 / ResNet-50 train-step time on a GPU (the paper: 1.10; timm: 1.13-1.25)


def check_fused(name: str, num_classes: int, size: int) -> None:
    """Refuse to time the fused variant unless, in plain fp32 eager math, it computes what the SE unit does."""
    plain = build_model(name, {"model.num_classes": num_classes}).eval()
    fused = copy.deepcopy(plain)
    fuse_se_epilogue(fused, op=scale_add_relu)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if not torch.allclose(plain(x), fused(x), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"the fused SE epilogue changes the output of {name}; not timing it")


def se_overhead(
    base: str, num_classes: int, size: int, batch: int, plan: Plan, setup: Setup, log: Log, compiled: bool = True
) -> Result:
    """Train-step time of `se_<base>` over `<base>`: eager, and on CUDA also captured as a CUDA graph and, with
    `compiled`, compiled and with the fused epilogue."""
    cuda = setup.device.type == "cuda"
    options = {"model.num_classes": num_classes}
    data = repeat(random_batch(setup, batch, size, num_classes))

    def step(name: str, *, compile: bool = False, fused: bool = False, graphs: bool = False) -> Callable[[], None]:
        torch.manual_seed(0)
        model = build_model(name, options)
        if fused:
            fuse_se_epilogue(model)
        return timed_step(model, data, setup, compile=compile, graphs=graphs)

    se = f"se_{base}"
    variants = {base: step(base), se: step(se)}
    pairs = [("eager", se, base)]
    if cuda:
        variants |= {f"{base} graphs": step(base, graphs=True), f"{se} graphs": step(se, graphs=True)}
        pairs.append(("CUDA graphs", f"{se} graphs", f"{base} graphs"))
    if cuda and compiled:
        check_fused(se, num_classes, size)
        torch.compiler.reset()  # each group starts with empty compile caches, far from the recompile limit
        variants |= {
            f"{base} compiled": step(base, compile=True),
            f"{se} compiled": step(se, compile=True),
            f"{se} fused": step(se, fused=True),
        }
        pairs += [("compiled", f"{se} compiled", f"{base} compiled"), ("fused epilogue", f"{se} fused", base)]
    samples = interleave(variants, plan, Clock(setup.device), log)
    kinds = "eager only; the CUDA-graph, torch.compile and fused-epilogue variants run on CUDA"
    if cuda:
        kinds = "`graphs` = the whole eager step captured as one CUDA graph (`train.compile: graphs`)"
    if cuda and compiled:
        kinds += (
            "; `compiled` = torch.compile (mode default) of the whole model; `fused` = eager model whose SE units "
            "end in one compiled ReLU(branch · s + shortcut) (benchmarks/_steps.py)"
        )
    result = Result(
        f"SE overhead: {se} / {base} train step",
        [
            f"{batch} random images of {size}×{size} resident on the device, {num_classes} classes, senet_core's "
            "default options" + (" (stride on the first 1×1 conv, as in the paper)" if base == "resnet50" else ""),
            f"step: {STEP}, {setup.describe()}",
            f"variants: {kinds}",
            describe_plan(plan, samples),
        ],
        step_rows(samples, batch),
    )
    for label, num, den in pairs:
        r = ratio(samples, num, den)
        result.rows.append((f"ratio {num} / {den}", r.format(3)))
        if base == "resnet50" and cuda:
            target = f"SE-ResNet-50 / ResNet-50 step ≤ {SE_TARGET} on GPU, {label} (paper 1.10, timm 1.13-1.25)"
            result.checks.append(Check(target, r.format(3), verdict(r.mean <= SE_TARGET)))
    if base == "resnet50" and not cuda:
        target = f"SE-ResNet-50 / ResNet-50 step ≤ {SE_TARGET} on GPU (paper 1.10, timm 1.13-1.25)"
        why = "not measured — no GPU on this machine (the CPU ratio is in §1, for information)"
        result.checks.append(Check(target, "—", why))
    return result
