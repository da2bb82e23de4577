"""Interleaved timing of competing variants and the mean ± std arithmetic of its samples.

Variants that are compared run in the same process, round by round, so that drift in clock speed, thermal
state or the load of other processes touches all of them alike; a ratio is taken within each round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Log = Callable[[str], None]  # where progress lines go (print, or nothing in tests)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of per-round samples; std is 0 for a single sample."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(statistics.fmean(samples), std, len(samples))

    def scaled(self, factor: float) -> Summary:
        return Summary(self.mean * factor, self.std * abs(factor), self.n)

    def format(self, digits: int = 3, unit: str = "") -> str:
        """`1.083 ± 0.012`, then `unit` (e.g. " ms"): the way every result in RESULTS.md reads."""
        return f"{self.mean:,.{digits}f} ± {self.std:,.{digits}f}{unit}"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two variants timed in the same rounds."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} and {len(denominators)} rounds; ratios need the same rounds")
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


@dataclass(frozen=True)
class Plan:
    """How long to time: warm-up, then rounds until the budget is spent, within the round limits."""

    warmup: int  # steps per variant before timing (compilation, cuDNN autotuning, allocator growth)
    steps: int  # steps per variant per round
    min_rounds: int  # rounds timed even when they outlast the budget
    max_rounds: int  # rounds at most
    budget_s: float  # seconds of timed rounds after which no new round starts (once min_rounds are done)


class Clock:
    """Seconds taken by `n` calls of a function: CUDA events on a GPU, `perf_counter` on the CPU.

    On the GPU the events bracket the work on the current stream, so host-side launch gaps that leave the GPU
    idle count, as they do in training; the device is synchronised before and after so nothing earlier or later
    leaks into the interval.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def seconds(self, fn: Callable[[], object], n: int) -> float:
        if not self.cuda:
            began = time.perf_counter()
            for _ in range(n):
                fn()
            return time.perf_counter() - began
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000


def interleave(
    variants: Mapping[str, Callable[[], object]],
    plan: Plan,
    clock: Clock,
    log: Log = print,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, one sample per round, the variants taking turns within each round.

    Odd rounds run the variants in reverse order (A B, B A, A B, ...), so that neither always follows the other
    and a variant's cost of warming caches after its neighbour falls on both sides alike.
    """
    names = list(variants)
    for name in names:
        clock.seconds(variants[name], plan.warmup)
    samples: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    for r in range(plan.max_rounds):
        if r >= plan.min_rounds and time.perf_counter() - began > plan.budget_s:
            break
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(clock.seconds(variants[name], plan.steps) / plan.steps)
        log(f"  round {r + 1}: " + ", ".join(f"{n} {samples[n][-1] * 1e3:.1f} ms" for n in names))
    return samples
