"""What a benchmark run found, the machine it ran on, and the RESULTS.md section that records both; the rows that
every step-time benchmark reports alike.

RESULTS.md holds one section per device kind (`cpu`, `cuda`) between HTML comment markers; a run replaces its
own device's section and keeps the others, so CPU and GPU numbers from different hosts live side by side.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ablations import tracking
from benchmarks._timing import Plan, Summary, ratios

HEADER = """# Benchmark results

Written by `python -m benchmarks.run` (see `benchmarks/README.md`); each device kind has its own section, which
a run on that kind replaces. The numbers are code-generated: rerun the benchmark rather than edit them.
"""


@dataclass(frozen=True)
class Check:
    """One target of the issue and how this run stands against it."""

    target: str
    result: str
    status: str  # "met", "not met", or "not measured — <why>"


@dataclass
class Result:
    """One benchmark: its settings, its measurements as (what, value) rows, and the targets it checks."""

    title: str
    settings: list[str]
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verdict(met: bool) -> str:
    return "met" if met else "not met"


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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_version() -> str:
    """`<short sha>` of the checkout, with `(dirty)` when it has uncommitted changes (`tracking.code_version`, the
    code version every run records)."""
    code = tracking.code_version()
    if code["git_sha"] == "unknown":
        return "unknown (not a git checkout)"
    return code["git_sha"][:7] + (" (dirty)" if code["git_dirty"] == "true" else "")


def machine(device: torch.device) -> list[tuple[str, str]]:
    """Hardware and software facts for the run's table."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}"),
        ("GPU", gpu),
        (
            "versions",
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"torchvision {version('torchvision')}, timm {version('timm')}",
        ),
        ("code", code_version()),
    ]


def render(
    key: str, heading: str, facts: list[tuple[str, str]], results: list[Result], remarks: Sequence[str] = ()
) -> str:
    """The Markdown section of one run, between the markers that `write_section` looks for; `remarks` follow the
    targets table."""
    lines = [f"<!-- bench:{key} -->", f"## {heading}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += ["", "### Targets", "", "| target | this run | status |", "|---|---|---|"]
    lines += [f"| {c.target} | {c.result} | {c.status} |" for r in results for c in r.checks]
    for remark in remarks:
        lines += ["", remark]
    for number, r in enumerate(results, 1):
        lines += ["", f"### {number}. {r.title}", ""]
        lines += [f"- {s}" for s in r.settings]
        if r.rows:
            lines += ["", "| measurement | mean ± std over rounds |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in r.rows]
        if r.notes:
            lines += [""] + [f"Note: {n}" for n in r.notes]
    lines.append(f"<!-- /bench:{key} -->")
    return "\n".join(lines) + "\n"


def write_section(path: Path, key: str, section: str) -> None:
    """Put `section` into the file at `path` in place of the earlier section for `key`, keeping the others."""
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
