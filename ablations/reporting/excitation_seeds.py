"""The role of excitation over every analysed seed of one model: each block's class-specificity per seed and
pooled, the depth trend (`depth_trend`), its figure and its CSV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablations.reporting import excitation_figures as figures
from ablations.reporting.depth_trend import DepthTrend, depth_trend
from ablations.reporting.figures import save

if TYPE_CHECKING:
    from ablations.reporting.excitation_data import Excitation

DEPTH_CSV = "excitation_depth.csv"
DEPTH_PNG = "excitation_depth.png"
DEPTH_COLUMNS = ["seed", "block", "depth", "stage", "index", "channels", "hidden", "omega2_median", "eta2_median",
                 "null_p95", "p", "permutations", "mean_gate", "share_above_0.9"]  # fmt: skip


def full(v: float | int) -> str:
    """A CSV cell at full precision: the shortest text that reads back as the same float."""
    return str(v) if isinstance(v, int) else repr(float(v))


def pool(exs: Sequence[Excitation], seeds: Sequence[int]) -> DepthTrend:
    """The depth trend of the models `exs` (one per seed, the same network); their blocks must agree."""
    blocks = list(exs[0].stats)
    if any(list(ex.stats) != blocks for ex in exs):
        raise ValueError("excitation: the seeds' models have different SE blocks")
    scores = np.stack([ex.scores() for ex in exs])
    positions = [exs[0].positions[b] for b in blocks]
    return depth_trend(blocks, positions, [exs[0].hidden[b] for b in blocks], seeds, scores)


def spread(trend: DepthTrend) -> dict[str, tuple[float, float, float, float, int]]:
    """Block → (mean, SD, min, max, seeds) of its specificity over the seeds where it has one (a seed whose gates
    in the block are all constant has none: NaN); SD NaN below two such seeds, all NaN with none."""
    out = {}
    for b, col in zip(trend.blocks, trend.scores.T, strict=True):
        col = col[np.isfinite(col)]
        if not len(col):
            out[b] = (math.nan, math.nan, math.nan, math.nan, 0)
            continue
        sd = float(np.std(col, ddof=1)) if len(col) > 1 else math.nan
        out[b] = (float(np.mean(col)), sd, float(np.min(col)), float(np.max(col)), len(col))
    return out


def write_seeds(trend: DepthTrend, out: Path, label: str, exs: Sequence[Excitation]) -> list[Path]:
    """The depth figure and the per-seed, per-block CSV under `out`; returns their paths."""
    fig = figures.excitation_depth(trend, title=f"Class-specificity (median ω²) by depth, every seed\n{label}")
    paths = [save(fig, out / DEPTH_PNG)]
    lines = [",".join(DEPTH_COLUMNS)]
    for seed, ex in zip(trend.seeds, exs, strict=True):
        for depth, (b, s) in enumerate(ex.stats.items(), 1):
            stage, index = ex.positions[b]
            cells = [seed, b, depth, stage, index, s.channels, ex.hidden[b]]
            values = [s.median, s.eta_median, s.null_hi, s.p, s.permutations, s.mean_gate, s.saturated]
            lines.append(",".join([*map(str, cells), *map(full, values)]))
    csv = out / DEPTH_CSV
    csv.write_text("\n".join(lines) + "\n")
    return [*paths, csv]
