"""Statistics of one SE block's gate values over labelled images (paper §7.2), as vectorised numpy.

Per channel, η² = between-class sum of squares / total sum of squares says how much of the gate's variation the
class explains; it is biased upwards (about (K − 1)/(n − 1) for a gate that ignores the class), so the block's
class-specificity is the median over channels of ω² (Hays' bias-corrected η², zero in expectation without a class
effect). Every channel counts once, as a distribution judged against a label-permutation null, with a bootstrap
interval, and saturation is measured directly (mean gate, share of gates above 0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERMUTATIONS = 2000  # label shuffles of the null distribution
BOOTSTRAPS = 2000  # resamples of the bootstrap interval
SATURATED = 0.9  # a gate above this passes its channel almost unchanged
CONFIDENCE = 0.95
CHUNK = 256  # resamples computed in one array: bounds the memory of (resamples, images, channels)


def _sums(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per channel: the between-class and total sums of squares, the varying-channel mask, the class count."""
    classes, index = np.unique(labels, return_inverse=True)
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
    grand = values.mean(axis=0)
    sums = np.zeros((len(classes), values.shape[1]))
    np.add.at(sums, index, values)
    between = ((sums - counts[:, None] * grand) ** 2 / counts[:, None]).sum(axis=0)
    total = ((values - grand) ** 2).sum(axis=0)
    varies = total > 1e-12 * max(1.0, float(np.abs(values).max(initial=0.0))) ** 2
    return between, total, varies, len(classes)


def eta_squared(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-channel η² of `values` (images, channels) by `labels` (images,): between-class / total sum of squares.

    NaN for a channel whose gate never varies (η² is undefined there, and such a channel is counted apart)."""
    between, total, varies, _ = _sums(values, labels)
    out = np.full(values.shape[1], np.nan)
    out[varies] = between[varies] / total[varies]
    return out


def omega_from_eta(eta: np.ndarray, images: int, classes: int) -> np.ndarray:
    """Hays' ω² = (SS_b − (K − 1)·MS_w) / (SS_t + MS_w) from η² = SS_b / SS_t, with MS_w = SS_w / (n − K)."""
    if images <= classes:
        return np.full_like(eta, np.nan)
    within = (1.0 - eta) / (images - classes)  # MS_w / SS_t
    return (eta - (classes - 1) * within) / (1.0 + within)


def omega_squared(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-channel ω² of `values` (images, channels) by `labels`: η² corrected for its bias (NaN where constant)."""
    return omega_from_eta(eta_squared(values, labels), len(labels), len(np.unique(labels)))


def class_share(values: np.ndarray, labels: np.ndarray) -> float:
    """The pooled share Σ_c between / Σ_c total (variance-weighted η²); 0 when the gates do not vary at all."""
    between, total, _, _ = _sums(values, labels)
    return float(between.sum() / total.sum()) if total.sum() > 0 else 0.0


def null_medians(values: np.ndarray, labels: np.ndarray, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """The median over channels of ω² with the labels shuffled, once per permutation (vectorised in chunks)."""
    classes, index = np.unique(labels, return_inverse=True)
    k, n = len(classes), len(labels)
    _, total, varies, _ = _sums(values, labels)  # the total sum of squares is the same under every shuffle
    if not varies.any():
        return np.full(permutations, np.nan)
    x = values[:, varies]
    counts = np.bincount(index, minlength=k).astype(np.float64)
    grand_sq = n * x.mean(axis=0) ** 2
    out = np.empty(permutations)
    for start in range(0, permutations, CHUNK):
        shuffled = rng.permuted(np.broadcast_to(index, (min(CHUNK, permutations - start), n)), axis=1)
        onehot = (shuffled[:, None, :] == np.arange(k)[None, :, None]).astype(np.float64)  # (chunk, K, n)
        sums = onehot @ x  # (chunk, K, channels)
        between = (sums**2 / counts[None, :, None]).sum(axis=1) - grand_sq
        out[start : start + len(shuffled)] = np.median(omega_from_eta(between / total[varies], n, k), axis=1)
    return out


def bootstrap_medians(values: np.ndarray, labels: np.ndarray, bootstraps: int, rng: np.random.Generator) -> np.ndarray:
    """The median over channels of ω² with images resampled within their class, once per resample (vectorised)."""
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    n, k = len(labels), len(groups)
    scale = max(1.0, float(np.abs(values).max(initial=0.0))) ** 2
    out = np.empty(bootstraps)
    for start in range(0, bootstraps, CHUNK):
        m = min(CHUNK, bootstraps - start)
        sums, squares, between = np.zeros((m, values.shape[1])), np.zeros((m, values.shape[1])), 0.0
        for g in groups:
            drawn = values[g[rng.integers(0, len(g), size=(m, len(g)))]]  # (m, images of the class, channels)
            class_sum = drawn.sum(axis=1)
            sums += class_sum
            squares += (drawn**2).sum(axis=1)
            between = between + class_sum**2 / len(g)
        total = squares - sums**2 / n
        between = between - sums**2 / n
        eta = np.where(total > 1e-12 * scale, between / np.where(total > 0, total, 1.0), np.nan)
        omega = omega_from_eta(eta, n, k)
        out[start : start + m] = [_median(row) for row in omega]
    return out


@dataclass(frozen=True)
class BlockStats:
    """One block's gates over the analysed images.

    Attributes:
        channels: the block's channels; constant: those whose gate never varies (no η²).
        median, q1, q3: median and quartiles of the per-channel ω² of the other channels (the block's
            class-specificity is `median`).
        ci_lo, ci_hi: 95% bootstrap interval of the median (images resampled within their class; the percentile
            interval shifted by the bootstrap's bias estimate, as resampled duplicates inflate η² and ω²).
        null_median, null_hi: median and 95th percentile of the median ω² with the labels shuffled: what a
            class-agnostic block shows (near 0: the correction removes η²'s (K − 1)/(n − 1)).
        p: permutation p-value of the median against that null, (1 + #null ≥ observed) / (1 + permutations): a
            floor, since no trained block is class-agnostic; read the blocks against each other (`depth_trend`).
        eta_median: the median per-channel η², uncorrected, as earlier reports printed it.
        mean_gate: mean gate value; saturated: share of gate values above SATURATED.
        pooled: the pooled, variance-weighted η² (`class_share`), for comparison with earlier reports.
        permutations: the label shuffles behind `p`.
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
    eta_median: float
    mean_gate: float
    saturated: float
    pooled: float
    permutations: int


def _median(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else math.nan


def block_stats(gates: np.ndarray, labels: np.ndarray, *, permutations: int = PERMUTATIONS,
                bootstraps: int = BOOTSTRAPS, seed: int = 0) -> BlockStats:  # fmt: skip
    """The statistics of one block's `gates` (images, channels) by `labels`, with seeded resampling."""
    rng = np.random.default_rng(seed)
    eta = eta_squared(gates, labels)
    omega = omega_from_eta(eta, len(labels), len(np.unique(labels)))
    finite = omega[np.isfinite(omega)]
    median = _median(omega)
    q1, q3 = (float(v) for v in np.percentile(finite, [25, 75])) if finite.size else (math.nan, math.nan)
    null = null_medians(gates, labels, permutations, rng)
    boots = bootstrap_medians(gates, labels, bootstraps, rng)
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
        eta_median=_median(eta),
        mean_gate=float(gates.mean()),
        saturated=float((gates > SATURATED).mean()),
        pooled=class_share(gates, labels),
        permutations=len(valid),
    )
