"""The per-block gate statistics (paper §7.2) on constructed gate arrays: η² and its bias-corrected ω² by hand, the
vectorised permutation null and bootstrap against plain loops, and what a class-agnostic, a class-specific and a
saturated block show."""

import math
import time

import numpy as np
import pytest

from ablations.reporting.gate_stats import (
    PERMUTATIONS,
    block_stats,
    bootstrap_medians,
    class_share,
    eta_squared,
    null_medians,
    omega_squared,
)


def test_eta_squared_per_channel_by_hand():
    # channel 0: values 0, 2 (class 0) and 4, 6 (class 1): mean 3, total SS 9+1+1+9 = 20, between 2·2² + 2·2² = 16
    # channel 1: 1, 3 | 1, 3: class means equal → 0; channel 2 never varies → undefined (NaN)
    values = np.array([[0.0, 1.0, 0.5], [2.0, 3.0, 0.5], [4.0, 1.0, 0.5], [6.0, 3.0, 0.5]])
    labels = np.array([0, 0, 1, 1])
    eta = eta_squared(values, labels)
    assert eta[:2] == pytest.approx([0.8, 0.0]) and math.isnan(eta[2])
    # three classes of unequal size: 1 | 2, 4 | 9 → grand mean 4, total 9+4+0+25 = 38, between 9 + 2·1 + 25 = 36
    three = eta_squared(np.array([[1.0], [2.0], [4.0], [9.0]]), np.array([5, 7, 7, 9]))
    assert three[0] == pytest.approx(36 / 38)


def test_omega_squared_by_hand():
    # channel 0 above: SS_b 16, SS_t 20, SS_w 4, K = 2, n = 4: MS_w = 4 / 2 = 2, ω² = (16 − 1·2) / (20 + 2) = 14/22
    values = np.array([[0.0, 1.0, 0.5], [2.0, 3.0, 0.5], [4.0, 1.0, 0.5], [6.0, 3.0, 0.5]])
    omega = omega_squared(values, np.array([0, 0, 1, 1]))
    # channel 1: SS_b 0, SS_t = SS_w = 4, MS_w 2: ω² = −2 / 6, below zero as ω² may be where the class explains nothing
    assert omega[:2] == pytest.approx([14 / 22, -2 / 6]) and math.isnan(omega[2])


def test_omega_removes_the_bias_of_eta_without_a_class_effect():
    """Gates that ignore the class: η² averages (K − 1)/(n − 1), ω² averages 0."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(10), 20)  # K = 10, n = 200
    values = rng.normal(size=(200, 4000))
    assert np.mean(eta_squared(values, labels)) == pytest.approx(9 / 199, rel=0.03)
    assert abs(np.mean(omega_squared(values, labels))) < 0.002


def test_pooled_share_is_blind_to_channels_that_barely_vary():
    """One loud class-agnostic channel hides nine quiet, perfectly class-specific ones from the pooled share."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    quiet = 0.97 + 0.001 * labels[:, None] + np.zeros((100, 9))  # saturated near 1, shifted by class
    loud = rng.normal(0.5, 0.2, size=(100, 1))
    gates = np.hstack([loud, quiet])
    assert class_share(gates, labels) < 0.05
    s = block_stats(gates, labels, permutations=50, bootstraps=50)
    assert s.median == pytest.approx(1.0) and s.eta_median == pytest.approx(1.0) and s.p == pytest.approx(1 / 51)
    assert s.saturated == pytest.approx(0.9 + 0.1 * (loud > 0.9).mean())
    assert class_share(np.ones((4, 3)), np.array([0, 0, 1, 1])) == 0.0


def test_the_vectorised_resampling_equals_plain_loops():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), [7, 9, 11])
    values = rng.uniform(size=(27, 6)) + 0.1 * labels[:, None]
    null = null_medians(values, labels, 300, np.random.default_rng(1))  # 300 > CHUNK: two chunks
    index = np.unique(labels, return_inverse=True)[1]
    shuffles = np.random.default_rng(1)
    loop = []
    for start in (0, 256):
        rows = shuffles.permuted(np.broadcast_to(index, (min(256, 300 - start), 27)), axis=1)
        loop += [float(np.median(omega_squared(values, row))) for row in rows]
    assert null == pytest.approx(loop, abs=1e-12)
    boots = bootstrap_medians(values, labels, 5, np.random.default_rng(2))
    draws = np.random.default_rng(2)
    groups = [np.flatnonzero(labels == k) for k in range(3)]
    picks = [g[draws.integers(0, len(g), size=(5, len(g)))] for g in groups]
    loop = [float(np.median(omega_squared(values[np.concatenate([p[i] for p in picks])], np.sort(labels))))
            for i in range(5)]  # fmt: skip
    assert boots == pytest.approx(loop, abs=1e-12)


def test_a_saturated_block_shows_as_saturated():
    rng = np.random.default_rng(1)
    gates = rng.uniform(0.95, 0.999, size=(120, 32))
    s = block_stats(gates, rng.integers(0, 4, 120), permutations=50, bootstraps=50)
    assert s.saturated == 1.0 and s.mean_gate == pytest.approx(0.9745, abs=0.005)
    low = block_stats(rng.uniform(0.0, 0.5, size=(120, 32)), rng.integers(0, 4, 120), permutations=10, bootstraps=10)
    assert low.saturated == 0.0


def test_label_independent_gates_sit_on_the_permutation_null():
    rng = np.random.default_rng(2)
    gates, labels = rng.uniform(0.2, 0.8, size=(300, 64)), rng.integers(0, 4, 300)
    s = block_stats(gates, labels, permutations=400, bootstraps=100)
    # Without a class effect a channel's η² of K = 4 classes over n = 300 images is about χ²₃ / 299 (median 0.0079,
    # not 0); ω² removes the mean 3/299, so the null of the median ω² sits just below 0.
    assert -0.004 < s.null_median < 0 and s.null_hi < 0.004 and s.eta_median == pytest.approx(0.0079, abs=0.004)
    assert abs(s.median) < 0.005 and s.ci_lo <= s.median <= s.ci_hi and s.q1 <= s.median <= s.q3
    assert s.permutations == 400
    assert block_stats(gates, labels, permutations=400, bootstraps=100) == s  # seeded: equal input, equal numbers
    # Under the null the permutation p-value is uniform: over 20 independent blocks few fall below 0.05.
    ps = [block_stats(rng.uniform(size=(300, 64)), rng.integers(0, 4, 300), permutations=100, bootstraps=1).p
          for _ in range(20)]  # fmt: skip
    assert sum(p < 0.05 for p in ps) <= 3 and 0.2 < float(np.median(ps)) < 0.8


def test_class_specific_gates_clear_the_null():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 40)
    gates = 0.5 + 0.1 * labels[:, None] * rng.uniform(0.5, 1.0, size=(1, 16)) + rng.normal(0, 0.02, size=(160, 16))
    s = block_stats(gates, labels, permutations=200, bootstraps=200)
    assert s.median > 0.9 and s.null_hi < 0.05 and s.p == pytest.approx(1 / 201)
    assert s.ci_lo <= s.median <= s.ci_hi and s.ci_hi - s.ci_lo < 0.05
    assert s.constant == 0 and s.channels == 16 and s.median < s.eta_median


def test_the_default_resampling_is_2000_fold_and_fast():
    """The default 2000 shuffles and 2000 bootstrap resamples of one 64-channel block of 10 classes × 50 images (the
    demo's largest block) take well under a second on one core."""
    assert PERMUTATIONS >= 2000
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(10), 50)
    gates = rng.uniform(size=(500, 64)) + 0.05 * labels[:, None]
    start = time.process_time()
    s = block_stats(gates, labels)
    assert s.permutations == PERMUTATIONS and time.process_time() - start < 5
