"""The figures of a report, drawn from plain numbers: the overview forest plot of every table's paired Δ beside the
paper's, and per table error against cost with the Pareto frontier on intervals, validation curves with 95% bands,
and every seed's value joined by seed.

Each function returns a matplotlib `Figure` built without pyplot (no global state, no display backend); `save`
writes it as a PNG whose bytes depend only on the numbers drawn. A level of two seeds shows its two values, not a
t-interval over one degree of freedom. Error axes never leave 0-100 %: a mark that reaches past them is cut at the
frame and marked with a triangle.
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


def spread(s: Summary) -> tuple[float, float] | None:
    """What a level's mark spans: its t-interval from three values on, the two values themselves at n = 2 (a
    t-interval over one degree of freedom is about 18 SDs wide), nothing for one value or for equal values."""
    if s.n >= 3 and s.std > 0:
        return s.lo, s.hi
    if s.n == 2 and s.std > 0:
        half = s.std / math.sqrt(2)  # the two values are mean ± |a - b| / 2
        return s.mean - half, s.mean + half
    return None


def truncated(summaries: Sequence[Summary], low: float = LOW, high: float = HIGH) -> int:
    """How many marks (`spread`) reach past an error axis (0-100 %) and are drawn cut."""
    return sum(b is not None and (b[0] < low or b[1] > high) for b in map(spread, summaries))


def frontier(costs: Sequence[float], ours: Sequence[Summary]) -> list[int]:
    """The Pareto frontier judged on intervals, by cost: the levels no cheaper-or-equal level beats with an interval
    lying entirely below theirs. Empty when no level is beaten so (every interval overlaps a cheaper one's): a
    frontier drawn on point means would call levels dominated on differences the data cannot tell apart."""
    intervals = [(s.lo, s.hi) if s.n >= 2 and s.std > 0 else None for s in ours]

    def beaten(j: int) -> bool:
        b = intervals[j]
        return b is not None and any(i != j and (a := intervals[i]) is not None and costs[i] <= costs[j]
                                     and a[1] < b[0] for i in range(len(costs)))  # fmt: skip

    known = [i for i, c in enumerate(costs) if not math.isnan(c) and ours[i].n > 0]
    front = [i for i in known if not beaten(i)]
    return sorted(front, key=lambda i: (costs[i], ours[i].mean)) if len(front) < len(known) else []


def dodge(xs: Sequence[float], span: float, share: float = 0.025) -> list[float]:
    """`xs` with the points of equal cost (within 1% of the axis `span`) spread apart by `share` of it, centred
    on their cost, so equal-cost levels' marks do not stack."""
    out = [float(x) for x in xs]
    order = sorted((x, i) for i, x in enumerate(out) if not math.isnan(x))
    groups: list[list[int]] = []
    for x, i in order:
        if groups and x - out[groups[-1][0]] <= 0.01 * span:
            groups[-1].append(i)
        else:
            groups.append([i])
    step = share * span
    for group in groups:
        centre = math.fsum(xs[i] for i in group) / len(group)
        for k, i in enumerate(sorted(group)):
            out[i] = centre + (k - (len(group) - 1) / 2) * step
    return out


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
    """Means with their `spread` (solid: a t-interval; dotted: the two values of n = 2), cut at the axis limits
    (set before) and marked ▲/▼ where cut."""
    bottom, top = ax.get_ylim()
    for xi, s in zip(x, ours, strict=True):
        if s.n == 0 or math.isnan(xi):
            continue
        ax.plot([xi], [s.mean], "o", color=color, **kw)
        if (b := spread(s)) is not None:
            style = "-" if s.n >= 3 else ":"
            ax.plot([xi, xi], [max(b[0], bottom), min(b[1], top)], style, color=color, linewidth=1.5)
            if s.n == 2:
                ax.plot([xi, xi], list(b), "_", color=color, markersize=8)
            if b[0] < bottom:
                ax.plot([xi], [bottom], "v", color=color, markersize=8, clip_on=False)
            if b[1] > top:
                ax.plot([xi], [top], "^", color=color, markersize=8, clip_on=False)


def _marks(ours: Sequence[Summary]) -> tuple[list[float], list[float]]:
    """Lows and highs of the levels' marks (their mean where there is no spread), for the y limits."""
    spans = [spread(s) or (s.mean, s.mean) for s in ours]
    return [b[0] for b in spans], [b[1] for b in spans]


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


def cost(labels: Sequence[str], ours: Sequence[Summary], costs: Mapping[str, Sequence[float]], *, ylabel: str,
         title: str) -> Figure:  # fmt: skip
    """Error against each cost, one panel per entry of `costs` (axis label → one value per level, NaN unknown),
    x as % of the level that costs least, on an axis at least 10 points wide so that SE's fraction of a percent
    of FLOPs is not stretched over the whole axis; levels of equal cost are spread apart (`dodge`); the Pareto
    frontier on intervals (`frontier`) dashed, where there is one."""
    panels = [(name, [float(v) for v in values]) for name, values in costs.items()
              if any(not math.isnan(float(v)) for v in values)]  # fmt: skip
    fig = Figure(figsize=(4.6 * max(1, len(panels)) + 0.8, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels)), sharey=True))
    means = [s.mean for s in ours]
    _error_limits(axes[0], *_marks(ours))
    for ax, (name, values) in zip(axes, panels, strict=False):
        cheapest = min(v for v in values if not math.isnan(v))
        rel = [100.0 * v / cheapest for v in values]
        finite = [v for v in rel if not math.isnan(v)]
        margin = max(5.0, 0.15 * (max(finite) - min(finite)))
        ax.set_xlim(min(finite) - margin, max(finite) + margin)
        xs = dodge(rel, max(finite) - min(finite) + 2 * margin)
        _intervals(ax, xs, ours, OURS)
        front = frontier(values, ours)
        if front:
            ax.step([xs[i] for i in front], [means[i] for i in front], "--", where="post", color="gray", linewidth=1,
                    marker="o", markersize=11, markerfacecolor="none", label="Pareto frontier (intervals)")  # fmt: skip
            ax.legend(fontsize="small", loc="best")
        stacked: dict[float, int] = {}
        for label, x, xd, yv in zip(labels, rel, xs, means, strict=True):
            if not (math.isnan(xd) or math.isnan(yv)):
                k = stacked[round(x, 6)] = stacked.get(round(x, 6), -1) + 1  # stagger the labels of equal costs
                ax.annotate(label, (xd, yv), textcoords="offset points", xytext=(4, 4 + 10 * k), fontsize="small")
        ax.set_xlabel(f"{name}\n% of the cheapest level ({cheapest:.4g} = 100 %)")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig


def curves(labels: Sequence[str], histories: Sequence[Sequence[Mapping[int, float]]], *, ylabel: str,
           title: str) -> Figure:  # fmt: skip
    """Per level, the mean validation error per epoch over its seeds with a 95% t-band from three seeds on, the band
    between the two values at two (cut at 0 and 100 %).

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
        band = [(e, b) for e, s in zip(epochs, at, strict=True) if (b := spread(s)) is not None]
        if band:
            ax.fill_between([e for e, _ in band], [max(b[0], LOW) for _, b in band], [min(b[1], HIGH) for _, b in band],
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
    marks = _marks(summaries)
    lows = [*marks[0], *(chance for d in diverged if d)]
    highs = [*marks[1], *(chance for d in diverged if d)]
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
