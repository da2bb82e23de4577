"""The figures of a report, drawn from plain numbers: the overview forest plot of every table's paired Δ beside the
paper's, and per table error against cost with the Pareto frontier, validation curves with 95% bands, and every
seed's value joined by seed.

Each function returns a matplotlib `Figure` built without pyplot (no global state, no display backend); `save`
writes it as a PNG whose bytes depend only on the numbers drawn. Error axes never leave 0-100 %: an interval
that reaches past them (a t-interval over two seeds can) is cut at the frame and marked with a triangle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from ablations.reporting.stats import BETTER, WORSE, Summary, summarize

OURS = "tab:blue"
PAPER = "tab:red"
VERDICT_COLOURS = {BETTER: "tab:green", WORSE: "tab:red"}  # anything else: grey
LOW, HIGH = 0.0, 100.0  # an error in %


def save(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG without the software tag, so equal figures give equal files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def truncated(summaries: Sequence[Summary], low: float = LOW, high: float = HIGH) -> int:
    """How many intervals reach past an error axis (0-100 %) and are drawn cut."""
    return sum(s.n > 1 and (s.lo < low or s.hi > high) for s in summaries)


def pareto_front(costs: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the levels no other level beats on both cost and error (lower is better), by cost."""
    pairs = enumerate(zip(costs, errors, strict=True))
    points = sorted((c, e, i) for i, (c, e) in pairs if not (math.isnan(c) or math.isnan(e)))
    front, best = [], math.inf
    for _, e, i in points:
        if e < best:
            front.append(i)
            best = e
    return front


def _error_limits(ax: Any, lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """Y limits around the finite values, inside 0-100 %."""
    finite = [v for v in (*lows, *highs) if not math.isnan(v)]
    if not finite:
        return LOW, HIGH
    lo, hi = min(finite), max(finite)
    pad = max(0.5, 0.08 * (hi - lo))
    bottom, top = max(LOW, lo - pad), min(HIGH, hi + pad)
    ax.set_ylim(bottom, top)
    return bottom, top


def _intervals(ax: Any, x: Sequence[float], ours: Sequence[Summary], color: str, **kw: Any) -> None:
    """Means with their intervals, cut at the axis limits (set before) and marked ▲/▼ where cut."""
    bottom, top = ax.get_ylim()
    for xi, s in zip(x, ours, strict=True):
        if s.n == 0 or math.isnan(xi):
            continue
        ax.plot([xi], [s.mean], "o", color=color, **kw)
        if s.n > 1:
            ax.plot([xi, xi], [max(s.lo, bottom), min(s.hi, top)], "-", color=color, linewidth=1.5)
            if s.lo < bottom:
                ax.plot([xi], [bottom], "v", color=color, markersize=8, clip_on=False)
            if s.hi > top:
                ax.plot([xi], [top], "^", color=color, markersize=8, clip_on=False)


def forest(rows: pd.DataFrame, *, title: str) -> Figure:
    """The overview: one row per level of every table (`frames.forest_frame`), our paired Δ with its 95% interval
    (coloured by verdict) on the left, the paper's Δ on its own panel and scale on the right (never a twin axis:
    the paper's 0.1-point ImageNet differences must not look as tall as our 10-point ones)."""
    n = len(rows)
    fig = Figure(figsize=(10, 1.2 + 0.34 * max(n, 1)), layout="constrained")
    ours, paper = fig.subplots(1, 2, sharey=True, width_ratios=[3, 1.3])
    y = np.arange(n)[::-1].astype(float)
    labels = [f"{r.study}: {r.level}" + (" (reference)" if r.reference else "") for r in rows.itertuples()]
    ours.set_yticks(y, labels, fontsize="small")
    ours.set_ylim(-0.7, n - 0.3)
    finite = [v for v in (*rows["lo"], *rows["hi"], *rows["delta"], 0.0) if not math.isnan(v)]
    span = max(finite) - min(finite) or 1.0
    left, right = max(-HIGH, min(finite) - 0.05 * span), min(HIGH, max(finite) + 0.05 * span)
    ours.set_xlim(left, right)
    for yi, r in zip(y, rows.itertuples(), strict=True):
        if math.isnan(r.delta):
            continue
        colour = VERDICT_COLOURS.get(r.verdict, "tab:gray")
        ours.plot([r.delta], [yi], "o", color=colour)
        if not math.isnan(r.lo):
            ours.plot([max(r.lo, left), min(r.hi, right)], [yi, yi], "-", color=colour, linewidth=1.5)
            if r.lo < left:
                ours.plot([left], [yi], "<", color=colour, clip_on=False)
            if r.hi > right:
                ours.plot([right], [yi], ">", color=colour, clip_on=False)
    paper.plot(rows["paper_delta"], y, "D", color=PAPER)
    for ax in (ours, paper):
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.grid(axis="x", alpha=0.3)
        for yi, (a, b) in zip(y[1:], zip(rows["study"][:-1], rows["study"][1:], strict=True), strict=True):
            if a != b:
                ax.axhline(yi + 0.5, color="gray", linewidth=0.6)
    ours.set_xlabel("ours: Δ test top-1 error vs reference (points), 95% CI\ngreen better · red worse · grey neither")
    paper.set_xlabel("paper: Δ top-1 error (points)\nImageNet ResNet-50, own scale")
    if rows["paper_delta"].isna().all():
        paper.set_xlim(-1, 1)
    fig.suptitle(title)
    return fig


def cost(labels: Sequence[str], ours: Sequence[Summary], gflops: Sequence[float], params_m: Sequence[float], *,
         ylabel: str, title: str) -> Figure:  # fmt: skip
    """Error against GFLOPs (left) and params (right), one point per level with its 95% interval; the Pareto
    frontier (no level both cheaper and better) as a dashed step line."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    means = [s.mean for s in ours]
    _error_limits(axes[0], [s.lo if s.n > 1 else s.mean for s in ours], [s.hi if s.n > 1 else s.mean for s in ours])
    for ax, values, xlabel in zip(axes, (gflops, params_m), ("GFLOPs (multiply-adds)", "params (M)"), strict=True):
        xs = [float(v) for v in values]
        _intervals(ax, xs, ours, OURS)
        front = pareto_front(xs, means)
        if front:
            ax.step([xs[i] for i in front], [means[i] for i in front], "--", where="post", color="gray", linewidth=1,
                    marker="o", markersize=11, markerfacecolor="none", label="Pareto frontier")  # fmt: skip
            ax.legend(fontsize="small", loc="best")
        for label, xv, yv in zip(labels, xs, means, strict=True):
            if not (math.isnan(xv) or math.isnan(yv)):
                ax.annotate(label, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.set_xlabel(xlabel)
        ax.margins(x=0.25)  # room for the labels; SE adds well under 1% of the cost, so the points sit close
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig


def curves(labels: Sequence[str], histories: Sequence[Sequence[Mapping[int, float]]], *, ylabel: str,
           title: str) -> Figure:  # fmt: skip
    """Per level, the mean validation error per epoch over its seeds with a 95% t-band where n ≥ 2 (cut at 0 and
    100 %).

    Args:
        histories: per level, one {epoch: value} per finished run.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, runs) in enumerate(zip(labels, histories, strict=True)):
        epochs = sorted({e for run in runs for e in run})
        if not epochs:
            continue
        color = f"C{i % 10}"
        at = [summarize([run[e] for run in runs if e in run]) for e in epochs]
        ax.plot(epochs, [s.mean for s in at], "-", color=color, label=f"{label} (n = {len(runs)})")
        band = [(e, s) for e, s in zip(epochs, at, strict=True) if s.n > 1]
        if band:
            ax.fill_between([e for e, _ in band], [max(s.lo, LOW) for _, s in band], [min(s.hi, HIGH) for _, s in band],
                            color=color, alpha=0.2, linewidth=0)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def seeds(labels: Sequence[str], values: Sequence[Mapping[int, float]], diverged: Sequence[Sequence[int]],
          chance: float, *, ylabel: str, title: str) -> Figure:  # fmt: skip
    """Every finished seed as a dot, a seed's dots across levels joined by a line (the pairing the paired Δ
    uses), each level's mean with its 95% interval beside; diverged seeds as × at the chance error."""
    fig = Figure(figsize=(max(5.0, 1.0 + 1.2 * len(labels)), 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(labels), dtype=float)
    ax.set_xticks(x, labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0, ha="right")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    summaries = [summarize([v for _, v in sorted(per.items())]) for per in values]
    lows = [*(s.lo if s.n > 1 else s.mean for s in summaries), *(chance for d in diverged if d)]
    highs = [*(s.hi if s.n > 1 else s.mean for s in summaries), *(chance for d in diverged if d)]
    _error_limits(ax, lows, highs)
    all_seeds = sorted({s for per in values for s in per} | {s for d in diverged for s in d})
    for j, seed in enumerate(all_seeds):
        ys = [per.get(seed, math.nan) for per in values]  # a gap where the seed has no finished run
        ax.plot(x, ys, "o-", color=f"C{j % 10}", alpha=0.8, linewidth=1,
                markersize=5, label=f"seed {seed}")  # fmt: skip
        gone = [xi for xi, d in zip(x, diverged, strict=True) if seed in d]
        if gone:
            ax.plot(gone, [chance] * len(gone), "x", color=f"C{j % 10}", markersize=9, mew=2, clip_on=False)
    _intervals(ax, list(x + 0.22), summaries, "black", markersize=4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if all_seeds:
        ax.legend(fontsize="x-small", loc="best", title="× diverged (at chance)" if any(diverged) else None,
                  title_fontsize="x-small")  # fmt: skip
    return fig
