"""Speed benchmarks of the issue: SE overhead per training step, ours against timm, and the CIFAR data pipeline.

`python -m benchmarks.run [--device cpu|cuda] [--quick] [--out benchmarks/RESULTS.md]` times every comparison
interleaved in one process and writes this device's section of RESULTS.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ablations.config import DataSection
from ablations.data.build import build_data
from benchmarks._report import Check, Result, machine, render, verdict, write_section
from benchmarks._steps import Setup, endless, fuse_se_epilogue, random_batch, repeat, scale_add_relu, train_step
from benchmarks._timing import Clock, Plan, Summary, interleave, ratios
from benchmarks.harness import harness_overhead
from senet_core import build_model, count_params

DEFAULT_OUT = Path(__file__).parent / "RESULTS.md"
SE_TARGET = 1.05  # SE-ResNet-50 / ResNet-50 train-step time on a GPU (the paper: 1.10; timm: 1.13-1.25)
TIMM_TARGET = 1.0  # our SE-ResNet-50 / timm's seresnet50 train-step time
DATA_TARGET = 2.0  # percent of the CIFAR training loop spent producing batches
SERESNET50_PARAMS = 28_088_024  # timm seresnet50 = SE-ResNet-50, r=16, FC biases (REFERENCE §4)
CPU_REMARK = (
    "GPU targets: not measured — no GPU on this machine. The SE-overhead target is for a GPU step; the timm and "
    "pipeline targets are checked here on the CPU too, but speaking for the GPU needs a run of "
    "`python -m benchmarks.run --device cuda` on a GPU host, which adds its own section."
)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Sizes and timing plans of one mode (quick or full) on one device kind."""

    imagenet_size: int  # pixels, side of the ResNet-50 input
    imagenet_batch: int  # images per ResNet-50 step
    imagenet_plan: Plan
    cifar_batch: int  # images per ResNet-56 step (SE overhead)
    cifar_plan: Plan
    pipeline_batch: int  # images per step of the data-pipeline benchmark (He et al.: 128)
    pipeline_images: int  # synthetic 32×32 training images before the 5k validation hold-out
    pipeline_plan: Plan


SETTINGS = {
    ("cpu", False): Settings(
        imagenet_size=224,
        imagenet_batch=8,
        imagenet_plan=Plan(warmup=2, steps=1, min_rounds=5, max_rounds=16, budget_s=65),
        cifar_batch=64,
        cifar_plan=Plan(warmup=2, steps=2, min_rounds=5, max_rounds=20, budget_s=30),
        pipeline_batch=128,
        pipeline_images=50_000,
        pipeline_plan=Plan(warmup=2, steps=2, min_rounds=4, max_rounds=15, budget_s=35),
    ),
    ("cpu", True): Settings(
        imagenet_size=112,
        imagenet_batch=8,
        imagenet_plan=Plan(warmup=2, steps=1, min_rounds=3, max_rounds=8, budget_s=12),
        cifar_batch=64,
        cifar_plan=Plan(warmup=1, steps=1, min_rounds=3, max_rounds=10, budget_s=8),
        pipeline_batch=128,
        pipeline_images=10_000,
        pipeline_plan=Plan(warmup=1, steps=1, min_rounds=3, max_rounds=10, budget_s=8),
    ),
    ("cuda", False): Settings(
        imagenet_size=224,
        imagenet_batch=128,
        imagenet_plan=Plan(warmup=10, steps=10, min_rounds=10, max_rounds=30, budget_s=60),
        cifar_batch=128,
        cifar_plan=Plan(warmup=20, steps=20, min_rounds=10, max_rounds=40, budget_s=30),
        pipeline_batch=128,
        pipeline_images=50_000,
        pipeline_plan=Plan(warmup=20, steps=50, min_rounds=10, max_rounds=40, budget_s=30),
    ),
    ("cuda", True): Settings(
        imagenet_size=224,
        imagenet_batch=64,
        imagenet_plan=Plan(warmup=5, steps=5, min_rounds=5, max_rounds=10, budget_s=10),
        cifar_batch=128,
        cifar_plan=Plan(warmup=10, steps=10, min_rounds=5, max_rounds=10, budget_s=5),
        pipeline_batch=128,
        pipeline_images=50_000,
        pipeline_plan=Plan(warmup=10, steps=20, min_rounds=5, max_rounds=10, budget_s=5),
    ),
}
STEP = "forward + backward + SGD step (momentum 0.9, weight decay 1e-4)"


def describe_plan(plan: Plan, samples: dict[str, list[float]]) -> str:
    rounds = len(next(iter(samples.values())))
    return (
        f"timing: {plan.warmup} warm-up step(s) per variant, then {rounds} rounds of {plan.steps} step(s) per "
        "variant, the variants interleaved (order reversed every other round)"
    )


def step_rows(samples: dict[str, list[float]], batch: int) -> list[tuple[str, str]]:
    """Time per call of each variant and the images per second that makes."""
    rows = []
    for name, seconds in samples.items():
        per_second = images_per_s(Summary.of([batch / s for s in seconds]))
        rows.append((f"`{name}`", f"{Summary.of(seconds).scaled(1e3).format(1, ' ms')} ({per_second})"))
    return rows


def images_per_s(rate: Summary) -> str:
    return rate.format(1 if rate.mean < 100 else 0, " images/s")


def ratio(samples: dict[str, list[float]], num: str, den: str) -> Summary:
    return Summary.of(ratios(samples[num], samples[den]))


def check_fused(name: str, num_classes: int, size: int) -> None:
    """Refuse to time the fused variant unless, in plain fp32 eager math, it computes what the SE unit does."""
    plain = build_model(name, {"model.num_classes": num_classes}).eval()
    fused = copy.deepcopy(plain)
    fuse_se_epilogue(fused, op=scale_add_relu)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if not torch.allclose(plain(x), fused(x), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"the fused SE epilogue changes the output of {name}; not timing it")


def se_overhead(base: str, num_classes: int, size: int, batch: int, plan: Plan, setup: Setup, log: Log) -> Result:
    """Train-step time of `se_<base>` over `<base>`: eager, and on CUDA also compiled and with the fused epilogue."""
    cuda = setup.device.type == "cuda"
    options = {"model.num_classes": num_classes}
    data = repeat(random_batch(setup, batch, size, num_classes))

    def step(name: str, *, compile: bool = False, fused: bool = False) -> Callable[[], None]:
        torch.manual_seed(0)
        model = build_model(name, options)
        if fused:
            fuse_se_epilogue(model)
        return train_step(model, data, setup, compile=compile)

    se = f"se_{base}"
    variants = {base: step(base), se: step(se)}
    pairs = [("eager", se, base)]
    if cuda:
        check_fused(se, num_classes, size)
        torch.compiler.reset()  # each group starts with empty compile caches, far from the recompile limit
        variants |= {
            f"{base} compiled": step(base, compile=True),
            f"{se} compiled": step(se, compile=True),
            f"{se} fused": step(se, fused=True),
        }
        pairs += [("compiled", f"{se} compiled", f"{base} compiled"), ("fused epilogue", f"{se} fused", base)]
    samples = interleave(variants, plan, Clock(setup.device), log)
    kinds = (
        "`compiled` = torch.compile (mode default) of the whole model; `fused` = eager model whose SE units end "
        "in one compiled ReLU(branch · s + shortcut) (benchmarks/_steps.py)"
        if cuda
        else "eager only; the torch.compile and fused-epilogue variants run on CUDA"
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


def versus_timm(size: int, batch: int, plan: Plan, setup: Setup, log: Log) -> Result:
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

    def step(make: Callable[[], nn.Module], *, compile: bool = False) -> Callable[[], None]:
        torch.manual_seed(0)
        return train_step(make(), data, setup, compile=compile)

    cuda = setup.device.type == "cuda"
    variants = {"ours": step(ours), "timm": step(theirs)}
    pairs = [("eager", "ours", "timm")]
    if cuda:
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
            + ("; `compiled` = torch.compile (mode default)" if cuda else ""),
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
        "loader + step": train_step(model, stream.__next__, setup),
        "fixed batch + step": train_step(model, repeat(next(stream)), setup),
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


def run(
    device: torch.device, quick: bool, log: Log, harness: str | None = None, harness_set: dict | None = None
) -> tuple[list[tuple[str, str]], list[Result]]:
    """All benchmarks on `device` (the harness one on study `harness`, if given); the run's facts and results."""
    s = SETTINGS[(device.type, quick)]
    setup = Setup.for_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    started = datetime.now(timezone.utc)
    results = []
    log(f"1/4 SE overhead, ResNet-50 at {s.imagenet_size}×{s.imagenet_size}, batch {s.imagenet_batch}")
    results.append(se_overhead("resnet50", 1000, s.imagenet_size, s.imagenet_batch, s.imagenet_plan, setup, log))
    log(f"2/4 SE overhead, ResNet-56 at 32×32, batch {s.cifar_batch}")
    results.append(se_overhead("resnet56", 10, 32, s.cifar_batch, s.cifar_plan, setup, log))
    log("3/4 ours against timm")
    results.append(versus_timm(s.imagenet_size, s.imagenet_batch, s.imagenet_plan, setup, log))
    log(f"4/4 CIFAR pipeline, batch {s.pipeline_batch}")
    results.append(pipeline(s.pipeline_batch, s.pipeline_images, s.pipeline_plan, setup, log))
    if harness:
        log(f"5/5 harness overhead, study {harness}")
        overrides = {"train.device": device.type, **(harness_set or {})}
        results.append(harness_overhead(harness, overrides, device.type, log))

    wall = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    facts = [
        ("date", f"{started:%Y-%m-%d %H:%M} UTC"),
        ("mode", "quick (smaller ImageNet input and fewer rounds)" if quick else "full"),
        ("run time", f"{wall / 60:.1f} min"),
        *machine(device),
        (
            "load",
            f"1-min load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end on {cores} cores; "
            f"this process kept {cpu_s / wall:.2f} cores busy on average with {torch.get_num_threads()} torch "
            "thread(s) (as many cores as threads = it never waited for one). Other processes may have been "
            "running: interleaving keeps the ratios fair, but absolute times can be inflated",
        ),
    ]
    return facts, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description="Speed benchmarks of senet-ablate.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer rounds (CPU: under ~2 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file; this device's section is replaced")
    parser.add_argument("--harness", default="demo", help="study of the harness benchmark (default demo; none skips)")
    parser.add_argument("--harness-set", action="append", default=[], metavar="KEY=VALUE", help="its --set overrides")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --device cpu, torch's own on cuda)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device: 'cuda' requested but no CUDA device is visible; allowed here: cpu", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"--threads: {args.threads} is not allowed; allowed: an integer >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # One thread by default on the CPU: on a shared machine, OpenMP threads that wait for each other at every
    # op's barrier while other processes hold the cores made steps 2-20x slower and erratic (measured here,
    # 2 cores, two other busy processes); one thread slows down only in proportion to the load.
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    from ablations.cli import parse_set

    harness = None if args.harness == "none" else args.harness
    facts, results = run(device, args.quick, lambda line: print(line, flush=True), harness, parse_set(args.harness_set))
    command = " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    facts.insert(1, ("command", f"`{command}`"))
    heading = "CPU" if device.type == "cpu" else "GPU (CUDA)"
    remarks = [] if device.type == "cuda" else [CPU_REMARK]
    section = render(device.type, heading, facts, results, remarks)
    write_section(args.out, device.type, section)
    print("\n" + section + f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
