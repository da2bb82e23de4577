"""Statistics of one SE block's gate values over labelled images (paper §7.2), as pure numpy.

Per channel, η² = between-class sum of squares / total sum of squares says how much of the gate's variation the
class explains. The pooled share Σ_c between / Σ_c total weights channels by their variance, so it is blind to
channels that barely vary, such as saturated ones (the paper's third finding, SE_5_2 near 1): here every channel
counts once, as a distribution (median, IQR) judged against a label-permutation null, with a bootstrap interval,
and saturation is measured directly (mean gate, share of gates above 0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERMUTATIONS = 200  # label shuffles of the null distribution
BOOTSTRAPS = 200  # resamples of the bootstrap interval
SATURATED = 0.9  # a gate above this passes its channel almost unchanged
CONFIDENCE = 0.95


def eta_squared(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-channel η² of `values` (images, channels) by `labels` (images,): between-class / total sum of squares.

    NaN for a channel whose gate never varies (η² is undefined there, and such a channel is counted apart)."""
    classes, index = np.unique(labels, return_inverse=True)
    onehot = np.zeros((len(labels), len(classes)))
    onehot[np.arange(len(labels)), index] = 1.0
    counts = onehot.sum(axis=0)
    grand = values.mean(axis=0)
    means = (onehot.T @ values) / counts[:, None]
    between = (counts[:, None] * (means - grand) ** 2).sum(axis=0)
    total = ((values - grand) ** 2).sum(axis=0)
    out = np.full(values.shape[1], np.nan)
    varies = total > 1e-12 * max(1.0, float(np.abs(values).max(initial=0.0))) ** 2
    out[varies] = between[varies] / total[varies]
    return out


def class_share(values: np.ndarray, labels: np.ndarray) -> float:
    """The pooled share Σ_c between / Σ_c total (variance-weighted η²); 0 when the gates do not vary at all."""
    centred = values - values.mean(axis=0)
    total = float((centred**2).sum())
    if total == 0.0:
        return 0.0
    between = 0.0
    for k in np.unique(labels):
        rows = centred[labels == k]
        between += len(rows) * float((rows.mean(axis=0) ** 2).sum())
    return between / total


@dataclass(frozen=True)
class BlockStats:
    """One block's gates over the analysed images.

    Attributes:
        channels: the block's channels; constant: those whose gate never varies (no η²).
        median, q1, q3: median and quartiles of the per-channel η² of the other channels.
        ci_lo, ci_hi: 95% bootstrap interval of the median (images resampled within their class; the percentile
            interval shifted by the bootstrap's bias estimate, as resampled duplicates inflate η²).
        null_median, null_hi: median and 95th percentile of the median η² with the labels shuffled: what a
            class-agnostic block shows at this many images (η² is positive even then).
        p: permutation p-value of the median, (1 + #null ≥ observed) / (1 + PERMUTATIONS).
        mean_gate: mean gate value; saturated: share of gate values above SATURATED.
        pooled: the pooled, variance-weighted share (`class_share`), for comparison with earlier reports.
    """

    channels: int
    constant: int
    median: float
    q1: float
    q3: float
    ci_lo: float
    ci_hi: float
    null_median: float
    null_hi: float
    p: float
    mean_gate: float
    saturated: float
    pooled: float


def _median(eta: np.ndarray) -> float:
    return float(np.nanmedian(eta)) if np.isfinite(eta).any() else math.nan


def block_stats(gates: np.ndarray, labels: np.ndarray, *, permutations: int = PERMUTATIONS,
                bootstraps: int = BOOTSTRAPS, seed: int = 0) -> BlockStats:  # fmt: skip
    """The statistics of one block's `gates` (images, channels) by `labels`, with seeded resampling."""
    rng = np.random.default_rng(seed)
    eta = eta_squared(gates, labels)
    finite = eta[np.isfinite(eta)]
    median = _median(eta)
    q1, q3 = (float(v) for v in np.percentile(finite, [25, 75])) if finite.size else (math.nan, math.nan)
    null = np.array([_median(eta_squared(gates, rng.permutation(labels))) for _ in range(permutations)])
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    boots = []
    for _ in range(bootstraps):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        boots.append(_median(eta_squared(gates[idx], labels[idx])))
    tail = (1 - CONFIDENCE) / 2
    ci = [math.nan, math.nan]
    if np.isfinite(boots).any() and not math.isnan(median):
        # Resampling duplicates images, which inflates η² (as fewer distinct images do): the percentile interval
        # is shifted by the bootstrap's own bias estimate, mean(boots) - median (Efron & Tibshirani 1993, §10).
        bias = float(np.nanmean(boots)) - median
        ci = [float(v) - bias for v in np.nanpercentile(boots, [100 * tail, 100 * (1 - tail)])]
    valid = null[np.isfinite(null)]
    p = (1 + int((valid >= median).sum())) / (1 + len(valid)) if valid.size and not math.isnan(median) else math.nan
    return BlockStats(
        channels=gates.shape[1],
        constant=int(np.isnan(eta).sum()),
        median=median,
        q1=q1,
        q3=q3,
        ci_lo=ci[0],
        ci_hi=ci[1],
        null_median=float(np.median(valid)) if valid.size else math.nan,
        null_hi=float(np.percentile(valid, 95)) if valid.size else math.nan,
        p=p,
        mean_gate=float(gates.mean()),
        saturated=float((gates > SATURATED).mean()),
        pooled=class_share(gates, labels),
    )
