"""Measured training time as a cost: per training image from the runs' own timing, and under what load it was
measured (how many of the report's runs trained at once on a host, from their MLflow start and end times)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ablations.outcomes import CellState
from ablations.reporting.results import Level


def ms_per_image(level: Level) -> float:
    """Mean over the finished runs of 1000 / images per second (training images, compile time left out); NaN
    when no run recorded its speed."""
    speeds = [v for c in level.cells if c.state == CellState.FINISHED and (v := c.metric("images_per_s"))]
    return math.fsum(1000.0 / v for v in speeds) / len(speeds) if speeds else math.nan


def most_at_once(levels: Iterable[Level]) -> tuple[int, str]:
    """The most runs of these levels that trained at the same time on one host, and that host."""
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    for lv in levels:
        for c in lv.cells:
            if c.run is not None and c.run.end_ms:
                spans.setdefault(c.run.tag("host") or "", {})[c.run.run_id] = (c.run.start_ms, c.run.end_ms)
    best, where = 0, ""
    for host, runs in sorted(spans.items()):
        events = sorted([(s, 1) for s, _ in runs.values()] + [(e, -1) for _, e in runs.values()])  # ends first
        now = peak = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        if peak > best:
            best, where = peak, host
    return best, where


def load_note(levels: list[Level]) -> str:
    """How the training times were measured, in words: under load when runs overlapped, with the threads and cores
    where the runs recorded them."""
    n, host = most_at_once(levels)
    if n == 0:
        return "no run recorded its start and end"
    tags = [c.run.tags for lv in levels for c in lv.cells if c.run is not None]
    threads = sorted({t["senet.threads"] for t in tags if "senet.threads" in t})
    cores = sorted({t["senet.host_cores"] for t in tags if "senet.host_cores" in t})
    where = f" on {host}" if host else ""
    if n == 1:
        return f"no two of these runs overlapped{where}; other load on the host is not recorded"
    plural = "s" if threads != ["1"] else ""
    share = (f"{'/'.join(threads)} thread{plural} each on {'/'.join(cores)} cores" if threads and cores
             else "their threads and the host's cores are not recorded")  # fmt: skip
    return f"measured under load: up to {n} runs trained at once{where}; {share}"
