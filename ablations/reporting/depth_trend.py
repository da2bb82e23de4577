"""The paper's relative claim (§7.2), tested directly: class-specificity grows with depth, per block and per stage,
over every seed of the reference model, with the seed as the block of a blocked permutation test.

The trend statistic is the mean over seeds of Spearman's ρ between position and specificity (ranks within a seed,
equivalent to Page's L when every seed has the same blocks); its null permutes the positions within each seed
independently, so it asks whether deeper blocks rank higher, not whether the class explains anything at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

TREND_PERMUTATIONS = 20000  # within-seed shuffles of the positions: cheap, a few values per seed
NARROW = 2  # hidden units at or below which a bottleneck makes its channels (nearly) one degree of freedom


@dataclass(frozen=True)
class Trend:
    """A blocked permutation test of an increasing trend.

    Attributes:
        rho: mean over strata (seeds, or seed × stage) of Spearman's ρ between position and score.
        per_stratum: each stratum's ρ, in the order given (NaN where it has fewer than 2 distinct scores).
        p: one-sided p (H1: ρ > 0), (1 + #null ≥ observed) / (1 + permutations); NaN when no stratum counts.
        permutations: the shuffles drawn.
    """

    rho: float
    per_stratum: list[float]
    p: float
    permutations: int


def _unit(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean()
    return centred / np.sqrt((centred**2).sum())


def blocked_trend(strata: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                  permutations: int = TREND_PERMUTATIONS, seed: int = 0) -> Trend:  # fmt: skip
    """Whether scores rise with position within every stratum: `strata` are (positions, scores) pairs.

    A stratum with fewer than two finite, distinct scores or positions has no ρ and is left out of the mean; the
    null shuffles the positions of each remaining stratum independently (seeded)."""
    rng = np.random.default_rng(seed)
    rhos, null, counted = [], np.zeros(permutations), 0
    for positions, scores in strata:
        pos, val = np.asarray(positions, dtype=float), np.asarray(scores, dtype=float)
        keep = np.isfinite(val)
        pos, val = pos[keep], val[keep]
        if len(val) < 2 or np.ptp(val) == 0 or np.ptp(pos) == 0:
            rhos.append(math.nan)
            continue
        rv, rp = _unit(rankdata(val)), _unit(rankdata(pos))
        rhos.append(float(rp @ rv))
        null += rng.permuted(np.broadcast_to(rp, (permutations, len(rp))), axis=1) @ rv
        counted += 1
    if not counted:
        return Trend(math.nan, rhos, math.nan, permutations)
    rho = float(np.nanmean(rhos))
    null /= counted
    p = (1 + int((null >= rho - 1e-12).sum())) / (1 + permutations)
    return Trend(rho, rhos, p, permutations)


@dataclass(frozen=True)
class Step:
    """The increase of mean specificity from one stage to the next, over seeds.

    Attributes:
        lower, upper: the two stages.
        delta: mean over seeds of (mean of the upper stage's blocks − mean of the lower stage's blocks).
        per_seed: each seed's difference.
        p: one-sided p (H1: the upper stage is higher) of a permutation test that exchanges the two stages' blocks
            within each seed.
    """

    lower: int
    upper: int
    delta: float
    per_seed: list[float]
    p: float


def stage_step(scores: np.ndarray, stages: Sequence[int], lower: int, upper: int, *,
               permutations: int = TREND_PERMUTATIONS, seed: int = 0) -> Step:  # fmt: skip
    """`scores` (seeds, blocks): the step from stage `lower` to `upper`, blocks exchanged within a seed under H0."""
    rng = np.random.default_rng(seed)
    stages = np.asarray(stages)
    lo, hi = np.flatnonzero(stages == lower), np.flatnonzero(stages == upper)
    per_seed, null, used = [], np.zeros(permutations), 0
    for row in scores:
        a, b = row[lo][np.isfinite(row[lo])], row[hi][np.isfinite(row[hi])]  # blocks without a value left out
        if not len(a) or not len(b):
            per_seed.append(math.nan)  # this seed says nothing of the step
            continue
        both = np.concatenate([a, b])
        per_seed.append(float(b.mean() - a.mean()))
        shuffled = rng.permuted(np.broadcast_to(both, (permutations, len(both))), axis=1)
        null += shuffled[:, len(a) :].mean(axis=1) - shuffled[:, : len(a)].mean(axis=1)
        used += 1
    null /= max(used, 1)
    finite = [d for d in per_seed if math.isfinite(d)]
    delta = float(np.mean(finite)) if finite else math.nan
    p = (1 + int((null >= delta - 1e-12).sum())) / (1 + permutations) if np.isfinite(delta) else math.nan
    return Step(lower, upper, delta, per_seed, p)


@dataclass(frozen=True)
class DepthTrend:
    """Class-specificity against depth over the seeds of one model.

    Attributes:
        blocks, stages, index, hidden: every SE block in forward order, its stage, its position in the stage and
            its bottleneck's hidden units (channels // r).
        seeds: the seeds analysed; scores: (seeds, blocks) class-specificity (median ω²).
        depth: the trend over every block (strata = seeds).
        stage_means: (seeds, stages) mean specificity of each stage's blocks; by_stage: the trend of those means
            over the stages; steps: each step to the next stage.
        within_stage: the trend of the block index within a stage (strata = seed × stage), where the bottleneck
            width is constant: the part of the depth trend that the width cannot explain.
        wide: the depth trend over the blocks whose bottleneck has more than NARROW hidden units (None with fewer
            than 3 such blocks).
    """

    blocks: list[str]
    stages: list[int]
    index: list[int]
    hidden: list[int]
    seeds: list[int]
    scores: np.ndarray
    depth: Trend
    stage_list: list[int]
    stage_means: np.ndarray
    by_stage: Trend
    steps: list[Step]
    within_stage: Trend
    wide: Trend | None

    def narrow(self) -> list[str]:
        """The blocks whose bottleneck width (≤ NARROW hidden units) is confounded with their depth."""
        return [b for b, h in zip(self.blocks, self.hidden, strict=True) if h <= NARROW]


def depth_trend(blocks: Sequence[str], positions: Sequence[tuple[int, int]], hidden: Sequence[int],
                seeds: Sequence[int], scores: np.ndarray, *, permutations: int = TREND_PERMUTATIONS,
                seed: int = 0) -> DepthTrend:  # fmt: skip
    """Every test of the trend of `scores` (seeds, blocks), blocks in forward order at (stage, index)."""
    scores = np.asarray(scores, dtype=float).reshape(len(seeds), len(blocks))
    stages = [s for s, _ in positions]
    index = [i for _, i in positions]
    depth = np.arange(1, len(blocks) + 1)
    kw = {"permutations": permutations, "seed": seed}
    stage_list = sorted(set(stages))
    masks = [np.asarray(stages) == s for s in stage_list]
    means = np.array([[np.nanmean(row[m]) for m in masks] for row in scores])
    within = [(np.asarray(index)[m], row[m]) for row in scores for m in masks]
    wide_cols = np.asarray(hidden) > NARROW
    wide = None
    if wide_cols.sum() >= 3:
        wide = blocked_trend([(depth[wide_cols], row[wide_cols]) for row in scores], **kw)
    return DepthTrend(
        blocks=list(blocks),
        stages=stages,
        index=index,
        hidden=list(hidden),
        seeds=list(seeds),
        scores=scores,
        depth=blocked_trend([(depth, row) for row in scores], **kw),
        stage_list=stage_list,
        stage_means=means,
        by_stage=blocked_trend([(stage_list, row) for row in means], **kw),
        steps=[stage_step(scores, stages, a, b, **kw) for a, b in zip(stage_list, stage_list[1:], strict=False)],
        within_stage=blocked_trend(within, **kw),
        wide=wide,
    )
