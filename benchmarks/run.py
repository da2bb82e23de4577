"""The entry point of the speed benchmarks: the settings per device and mode, the arguments, and the run of each
benchmark (one per file: se_overhead, timm_compare, pipeline, harness) into this device's section of RESULTS.md.

`python -m benchmarks.run [--device cpu|cuda] [--quick] [--out benchmarks/RESULTS.md]` times every comparison
interleaved in one process. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks._report import Result, machine, render, write_section
from benchmarks._steps import Setup
from benchmarks._timing import Log, Plan
from benchmarks.harness import ROUNDS, harness_overhead
from benchmarks.imagenet_data import imagenet_data
from benchmarks.pipeline import pipeline
from benchmarks.se_overhead import se_overhead
from benchmarks.throughput import throughput
from benchmarks.timm_compare import versus_timm

DEFAULT_OUT = Path(__file__).parent / "RESULTS.md"
CPU_REMARK = (
    "GPU targets: not measured — no GPU on this machine. The SE-overhead target is for a GPU step; the timm and "
    "pipeline targets are checked here on the CPU too, but speaking for the GPU needs a run of "
    "`python -m benchmarks.run --device cuda` on a GPU host, which adds its own section."
)


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


BENCHMARKS = ("throughput", "se_overhead", "timm", "pipeline", "imagenet_data", "harness")


def run(
    device: torch.device,
    quick: bool,
    log: Log,
    harness: str | None = None,
    harness_set: dict | None = None,
    only: Sequence[str] = BENCHMARKS,
    harness_rounds: int = ROUNDS,
) -> tuple[list[tuple[str, str]], list[Result]]:
    """The benchmarks named in `only` on `device` (the harness one on study `harness`, if given), in BENCHMARKS
    order; the run's facts and results. Quick CUDA runs time CUDA graphs but compile nothing (a cold compile of
    six networks takes minutes)."""
    s = SETTINGS[(device.type, quick)]
    setup = Setup.for_device(device)
    compiled = device.type == "cuda" and not quick
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    started = datetime.now(timezone.utc)
    chosen = [name for name in BENCHMARKS if name in only and (name != "harness" or harness)]
    results = []
    for number, name in enumerate(chosen, 1):
        head = f"{number}/{len(chosen)}"
        if name == "throughput":
            log(f"{head} engine throughput, eager and CUDA graphs")
            results.append(throughput(setup, s.cifar_plan, log, quick))
        elif name == "se_overhead":
            log(f"{head} SE overhead, ResNet-50 at {s.imagenet_size}×{s.imagenet_size}, batch {s.imagenet_batch}")
            results.append(se_overhead("resnet50", 1000, s.imagenet_size, s.imagenet_batch, s.imagenet_plan, setup,
                                       log, compiled))  # fmt: skip
            log(f"{head} SE overhead, ResNet-56 at 32×32, batch {s.cifar_batch}")
            results.append(se_overhead("resnet56", 10, 32, s.cifar_batch, s.cifar_plan, setup, log, compiled))
        elif name == "timm":
            log(f"{head} ours against timm")
            results.append(versus_timm(s.imagenet_size, s.imagenet_batch, s.imagenet_plan, setup, log, compiled))
        elif name == "pipeline":
            log(f"{head} CIFAR pipeline, batch {s.pipeline_batch}")
            results.append(pipeline(s.pipeline_batch, s.pipeline_images, s.pipeline_plan, setup, log))
        elif name == "imagenet_data":
            log(
                f"{head} ImageFolder path and the DDP wrapper, ResNet-50 at {s.imagenet_size}, batch {s.imagenet_batch}"
            )
            results.append(imagenet_data(s.imagenet_size, s.imagenet_batch, s.imagenet_plan, setup, log))
        elif harness:
            log(f"{head} harness overhead, study {harness}")
            overrides = {"train.device": device.type, **(harness_set or {})}
            results.append(harness_overhead(harness, overrides, device.type, log, harness_rounds))

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
    parser.add_argument("--harness-rounds", type=int, default=ROUNDS, help=f"ABBA rounds (default {ROUNDS})")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
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
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown or not only:
        print(f"--only: {args.only!r} is not allowed; allowed: comma-separated names of {', '.join(BENCHMARKS)}",
              file=sys.stderr)  # fmt: skip
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
    facts, results = run(device, args.quick, lambda line: print(line, flush=True), harness,
                         parse_set(args.harness_set), only, args.harness_rounds)  # fmt: skip
    command = " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    facts.insert(1, ("command", f"`{command}`"))
    heading = "CPU" if device.type == "cpu" else "GPU (CUDA)"
    remarks = [] if device.type == "cuda" else [CPU_REMARK]
    section = render(device.type, heading, facts, results, remarks)
    write_section(args.out, device.type, section)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"facts": facts, "results": [asdict(r) for r in results]}, indent=1))
    print("\n" + section + f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
