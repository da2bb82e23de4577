"""The role-of-excitation figures (paper §7.2): Fig. 6 (mean gate per class), Fig. 7 (per-class mean ± std) and,
beyond the paper, per block the distribution of per-channel ω² against its label-permutation null with the
saturation of its gates, and class-specificity against depth over seeds. Built without pyplot, like `figures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ablations.reporting.figures import OURS
from ablations.reporting.gate_stats import SATURATED, BlockStats

if TYPE_CHECKING:
    from ablations.reporting.depth_trend import DepthTrend


def excitation_profiles(blocks: Sequence[str], classes: Sequence[str], mean: Mapping[str, np.ndarray],
                        overall: Mapping[str, np.ndarray], *, title: str) -> Figure:  # fmt: skip
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


def excitation_spread(blocks: Sequence[str], classes: Sequence[str], mean: Mapping[str, np.ndarray],
                      std: Mapping[str, np.ndarray], *, title: str) -> Figure:  # fmt: skip
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


def excitation_eta2(blocks: Sequence[str], omega: Mapping[str, np.ndarray], stats: Mapping[str, BlockStats], *,
                     title: str) -> Figure:  # fmt: skip
    """Top: per block (forward order), a box of its per-channel ω² (bias-corrected η²), the bootstrap 95% interval
    of the median (black) and the 95th percentile of the label-permutation null (red bar). Bottom: mean gate and
    share of gates above 0.9."""
    fig = Figure(figsize=(max(6.0, 0.55 * len(blocks) + 2), 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(1, len(blocks) + 1)
    data = [omega[b][np.isfinite(omega[b])] for b in blocks]
    top.boxplot([d if d.size else np.array([np.nan]) for d in data], positions=x, widths=0.5, showfliers=False,
                medianprops={"color": OURS}, manage_ticks=False)  # fmt: skip
    for xi, b in zip(x, blocks, strict=True):
        s = stats[b]
        top.plot([xi + 0.32] * 2, [s.ci_lo, s.ci_hi], "-", color="black", linewidth=2)
        top.plot([xi - 0.3, xi + 0.3], [s.null_hi, s.null_hi], "-", color="tab:red", linewidth=1.5)
    top.plot([], [], "-", color="tab:red", label="null, 95th percentile of the median")
    top.plot([], [], "-", color="black", linewidth=2, label="median, bootstrap 95% CI")
    top.set_ylabel("per-channel ω² (bias-corrected class share)")
    top.set_ylim(min(0.0, *(float(d.min()) for d in data if d.size)) - 0.02, 1)  # ω² can fall below 0
    top.legend(fontsize="x-small", loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    top.grid(axis="y", alpha=0.3)
    bottom.plot(x, [stats[b].mean_gate for b in blocks], "o-", color=OURS, label="mean gate")
    bottom.plot(
        x, [stats[b].saturated for b in blocks], "s--", color="tab:orange", label=f"share of gates > {SATURATED}"
    )
    values = [v for b in blocks for v in (stats[b].mean_gate, stats[b].saturated) if np.isfinite(v)]
    bottom.set_ylim(min(0.0, *values) - 0.05, max(1.0, *values) + 0.05)  # the 0-1 scale of a sigmoid gate at least
    bottom.set_xticks(x, blocks, rotation=60, ha="right", fontsize="small")
    bottom.set_xlabel("SE block (forward order)")
    bottom.set_ylabel("gate")
    bottom.legend(fontsize="x-small", loc="best")
    bottom.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def excitation_depth(trend: DepthTrend, *, title: str) -> Figure:
    """Class-specificity (median ω²) of every block in forward order: one faint line per seed, the mean over seeds
    with its range, stage boundaries, and the blocks whose bottleneck has ≤ 2 hidden units hatched."""
    fig = Figure(figsize=(max(6.0, 0.55 * len(trend.blocks) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(1, len(trend.blocks) + 1)
    for seed, row in zip(trend.seeds, trend.scores, strict=True):
        ax.plot(x, row, "-", color="grey", alpha=0.45, linewidth=1, label=f"seed {seed}")
    mean = trend.scores.mean(axis=0)
    lo, hi = trend.scores.min(axis=0), trend.scores.max(axis=0)
    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o-", color=OURS, capsize=3,
                label=f"mean over {len(trend.seeds)} seed(s), range")  # fmt: skip
    narrow = set(trend.narrow())
    for xi, b in zip(x, trend.blocks, strict=True):
        if b in narrow:
            ax.axvspan(xi - 0.5, xi + 0.5, color="tab:orange", alpha=0.12, linewidth=0)
    if narrow:
        ax.axvspan(0, 0, color="tab:orange", alpha=0.12, label="bottleneck ≤ 2 hidden units")
    for xi, (a, b) in zip(x, zip(trend.stages, trend.stages[1:], strict=False), strict=False):
        if a != b:
            ax.axvline(xi + 0.5, color="black", linewidth=0.8, linestyle=":")
    hidden = [f"{b}\n({h})" for b, h in zip(trend.blocks, trend.hidden, strict=True)]
    ax.set_xticks(x, hidden, rotation=60, ha="right", fontsize="small")
    ax.set_xlim(0.5, len(x) + 0.5)
    ax.set_xlabel("SE block (hidden units), forward order")
    ax.set_ylabel("class-specificity (median ω²)")
    ax.set_title(f"depth trend: mean ρ = {trend.depth.rho:+.2f}, p = {trend.depth.p:.3g} (within-seed permutation)",
                 fontsize="small")  # fmt: skip
    ax.legend(fontsize="x-small", loc="best")
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
