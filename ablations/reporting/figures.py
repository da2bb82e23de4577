"""The figures of a report, drawn from plain numbers: error by level beside the paper's value, error against cost,
validation curves, per-seed dots, and the role-of-excitation plots (paper §7.2, Figs. 6-7).

Each function returns a matplotlib `Figure` built without pyplot (no global state, no display backend); `save`
writes it as a PNG whose bytes depend only on the numbers drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablations.reporting.stats import Summary

OURS = "tab:blue"
PAPER = "tab:red"
PAPER_AXIS = "paper top-1 error % (ImageNet ResNet-50)"


def save(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG without the software tag, so equal figures give equal files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _width(levels: int) -> float:
    return max(5.0, 1.0 + 1.1 * levels)


def _level_axis(ax, labels: Sequence[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = np.arange(len(labels), dtype=float)
    ax.set_xticks(x, labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0, ha="right")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    return x


def _ci(summaries: Sequence[Summary]) -> tuple[np.ndarray, np.ndarray]:
    """Means and asymmetric error-bar lengths (zero where the interval is undefined)."""
    means = np.array([s.mean for s in summaries], dtype=float)
    lo = np.array([s.mean - s.lo if s.n > 1 else 0.0 for s in summaries], dtype=float)
    hi = np.array([s.hi - s.mean if s.n > 1 else 0.0 for s in summaries], dtype=float)
    return means, np.vstack([lo, hi])


def _clamp_to_percent(ax: Any) -> None:
    """Keep an error axis inside 0-100 %: a t-interval over two seeds can reach past both ends, which no error
    can; the bars are then cut at the frame rather than drawn into impossible values."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0), min(hi, 100.0))


def error_by_level(
    labels: Sequence[str], ours: Sequence[Summary], paper: Sequence[float | None], *, ylabel: str, title: str
) -> Figure:
    """Our mean error per level with its 95% t-interval; the paper's value as a marker beside it, on its own axis
    (ImageNet errors sit on another scale: the comparison is of orderings, not values)."""
    fig = Figure(figsize=(_width(len(labels)), 4.2), layout="constrained")
    ax = fig.subplots()
    x = _level_axis(ax, labels)
    means, err = _ci(ours)
    handles: list[Any] = [
        ax.errorbar(x - 0.08, means, yerr=err, fmt="o", color=OURS, capsize=4, label="ours: mean, 95% CI")
    ]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _clamp_to_percent(ax)
    values = [math.nan if v is None else v for v in paper]
    if any(not math.isnan(v) for v in values):
        twin = ax.twinx()
        handles += twin.plot(x + 0.08, values, "D", color=PAPER, label="paper (ImageNet ResNet-50)")
        twin.set_ylabel(PAPER_AXIS, color=PAPER)
        twin.tick_params(axis="y", colors=PAPER)
    ax.legend(handles=handles, loc="best", fontsize="small")
    return fig


def tradeoff(
    labels: Sequence[str],
    ours: Sequence[Summary],
    params_m: Sequence[float],
    seconds: Sequence[float],
    *,
    ylabel: str,
    title: str,
) -> Figure:
    """Error against parameters (left) and against measured training time per run (right), one point per level."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    means, err = _ci(ours)
    for ax, values, xlabel in zip(axes, (params_m, seconds), ("params (M)", "train time per run (s)"), strict=True):
        xs = np.array(values, dtype=float)
        ax.errorbar(xs, means, yerr=err, fmt="o", color=OURS, capsize=3)
        for label, xv, yv in zip(labels, xs, means, strict=True):
            if not (math.isnan(xv) or math.isnan(yv)):
                ax.annotate(label, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    _clamp_to_percent(axes[0])
    fig.suptitle(title)
    return fig


def curves(
    labels: Sequence[str], histories: Sequence[Sequence[Mapping[int, float]]], *, ylabel: str, title: str
) -> Figure:
    """Per level, the mean validation error per epoch over its seeds, with a band of ± one std where n ≥ 2.

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
        at = [[run[e] for run in runs if e in run] for e in epochs]
        mean = np.array([np.mean(v) for v in at])
        ax.plot(epochs, mean, "-", color=color, label=f"{label} (n = {len(runs)})")
        if len(runs) > 1:
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in at])
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def seed_dots(labels: Sequence[str], values: Sequence[Mapping[int, float]], *, ylabel: str, title: str) -> Figure:
    """Every finished seed as a dot (spread sideways by seed), with a bar at the level's mean."""
    fig = Figure(figsize=(_width(len(labels)), 4.2), layout="constrained")
    ax = fig.subplots()
    x = _level_axis(ax, labels)
    seeds = sorted({s for v in values for s in v})
    offset = {s: (j - (len(seeds) - 1) / 2) * min(0.08, 0.5 / max(len(seeds), 1)) for j, s in enumerate(seeds)}
    for xi, per_seed in zip(x, values, strict=True):
        if not per_seed:
            continue
        ordered = sorted(per_seed.items())
        ax.plot([xi + offset[s] for s, _ in ordered], [v for _, v in ordered], "o", color=OURS, alpha=0.8)
        mean = float(np.mean([v for _, v in ordered]))
        ax.plot([xi - 0.25, xi + 0.25], [mean, mean], "-", color="black", linewidth=1.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig


def excitation_profiles(
    blocks: Sequence[str],
    classes: Sequence[str],
    mean: Mapping[str, np.ndarray],
    overall: Mapping[str, np.ndarray],
    *,
    title: str,
) -> Figure:
    """Fig. 6: per block, the mean excitation of each channel for each class and over all classes.

    Args:
        mean: block → (classes, channels) per-class means.
        overall: block → (channels,) mean over every class.
    """
    fig = Figure(figsize=(4.2 * len(blocks), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(blocks), squeeze=False)[0])
    for ax, block in zip(axes, blocks, strict=True):
        channels = np.arange(overall[block].shape[0])
        for k, name in enumerate(classes):
            ax.plot(channels, mean[block][k], "-", linewidth=1, color=f"C{k % 10}", label=name)
        ax.plot(channels, overall[block], "--", linewidth=1.5, color="black", label="all classes")
        ax.set_title(block)
        ax.set_xlabel("channel index")
        ax.set_ylabel("mean activation")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="x-small", loc="best")
    fig.suptitle(title)
    return fig


def excitation_spread(
    blocks: Sequence[str],
    classes: Sequence[str],
    mean: Mapping[str, np.ndarray],
    std: Mapping[str, np.ndarray],
    *,
    title: str,
) -> Figure:
    """Fig. 7: one panel per block (rows) and class (columns): per-channel mean excitation ± one std over images."""
    fig = Figure(figsize=(2.8 * len(classes), 2.4 * len(blocks)), layout="constrained")
    grid = fig.subplots(len(blocks), len(classes), squeeze=False, sharey=True)
    for row, block in zip(grid, blocks, strict=True):
        for k, (ax, name) in enumerate(zip(row, classes, strict=True)):
            m, s = mean[block][k], std[block][k]
            channels = np.arange(m.shape[0])
            ax.plot(channels, m, "-", linewidth=1, color=f"C{k % 10}")
            ax.fill_between(channels, m - s, m + s, color=f"C{k % 10}", alpha=0.25, linewidth=0)
            ax.set_title(f"{block} · {name}", fontsize="small")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("activation")
    for ax in grid[-1]:
        ax.set_xlabel("channel index")
    fig.suptitle(title)
    return fig


def specificity(blocks: Sequence[str], scores: Sequence[float], *, title: str) -> Figure:
    """Class-specificity of every SE block (share of its excitation variance explained by the class) by depth."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(blocks) + 2), 4), layout="constrained")
    ax = fig.subplots()
    depth = np.arange(1, len(blocks) + 1)
    ax.plot(depth, scores, "o-", color=OURS)
    ax.set_xticks(depth, blocks, rotation=60, ha="right", fontsize="small")
    ax.set_xlabel("SE block (forward order)")
    ax.set_ylabel("class share of excitation variance")
    ax.set_ylim(0, max(1e-3, *scores) * 1.1 if len(scores) else 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig
