"""Pareto fronts and hypervolumes against brute-force definitions, and their bootstrap over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from ablations.pareto import dominates, front_mask, front_probability, hypervolume, hypervolume_interval


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2], [2, 3], True),
        ([1, 3], [2, 3], True),  # no worse in one, better in the other
        ([1, 3], [1, 3], False),  # equal is not better
        ([1, 4], [2, 3], False),  # a trade-off
        ([2, 3], [1, 2], False),
        ([1], [2], True),
        ([0, 0, 0], [0, 0, 1], True),
        ([np.nan, 0], [1, 1], False),
        ([1, 1], [np.nan, 2], False),
    ],
)
def test_dominates(a, b, expected):
    assert dominates(np.array(a, dtype=float), np.array(b, dtype=float)) is expected


def brute_front(points: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """The definition, one pair at a time: a valid point that no other valid point dominates."""
    valid = [bool(f) and not any(np.isnan(p)) for p, f in zip(points, feasible, strict=True)]

    def beats(p, q):
        return all(x <= y for x, y in zip(p, q, strict=True)) and any(x < y for x, y in zip(p, q, strict=True))

    return np.array(
        [
            valid[j] and not any(valid[i] and beats(points[i], points[j]) for i in range(len(points)))
            for j in range(len(points))
        ]
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3])
def test_front_mask_matches_the_definition(seed, k):
    rng = np.random.default_rng(seed)
    # Small integers give ties in single objectives and whole duplicate rows.
    points = rng.integers(0, 6, size=(30, k)).astype(float)
    points[3] = points[7]
    points[5, 1] = np.nan
    points[11] = -1.0  # would dominate everything, but is infeasible
    feasible = rng.random(30) > 0.2
    feasible[11] = False
    feasible[[3, 7]] = True
    mask = front_mask(points, feasible)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, brute_front(points, feasible))
    assert not mask[5] and not mask[11] and mask.any()
    np.testing.assert_array_equal(front_mask(points), brute_front(points, np.ones(30, dtype=bool)))


def test_copies_of_a_front_point_are_all_on_it():
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [np.nan, 0.0]])
    np.testing.assert_array_equal(front_mask(points), [True, True, True, False, False])


def grid_volume(points: np.ndarray, reference: np.ndarray) -> int:
    """Exact dominated volume of integer points: count the unit cells of [0, reference) whose lower corner some
    point is no worse than (such a cell lies wholly between the point and the reference)."""
    corners = np.indices(tuple(reference)).reshape(len(reference), -1).T
    covered = np.zeros(len(corners), dtype=bool)
    for p in points:
        covered |= np.all(corners >= p, axis=1)
    return int(covered.sum())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_counts_the_grid_cells(seed, k):
    rng = np.random.default_rng(seed)
    reference = np.array([7, 6, 5][:k])
    # Up to one past the reference, so some points lie on or beyond it.
    points = rng.integers(0, reference + 2, size=(12, k))
    assert hypervolume(points.astype(float), reference.astype(float)) == grid_volume(points, reference)


def test_hypervolume_by_hand():
    assert hypervolume(np.array([[1.0, 2.0, 3.0]]), np.array([4.0, 4.0, 4.0])) == 3 * 2 * 1
    assert hypervolume(np.array([[0.5, 0.25]]), np.array([1.0, 1.0])) == 0.5 * 0.75
    assert hypervolume(np.array([[2.0], [0.5], [3.0]]), np.array([4.0])) == 3.5
    assert hypervolume(np.array([[1.0, 3.0], [3.0, 1.0]]), np.array([4.0, 4.0])) == 3 + 3 - 1
    # On or beyond the reference in any objective adds nothing, nor does a NaN row.
    beyond = np.array([[5.0, 0.0], [0.0, 4.0], [np.nan, 1.0]])
    assert hypervolume(beyond, np.array([4.0, 4.0])) == 0.0
    assert hypervolume(np.vstack([beyond, [[3.0, 3.0]]]), np.array([4.0, 4.0])) == 1.0
    assert hypervolume(np.empty((0, 3)), np.zeros(3)) == 0.0
    four = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0]])
    assert hypervolume(four, np.full(4, 3.0)) == 16 + 3 - 2  # the two overlap in [1, 3] x [2, 3]^3


@pytest.mark.parametrize(
    ("points", "reference"),
    [(np.zeros((3, 2)), np.ones(3)), (np.zeros(3), np.ones(3)), (np.zeros((3, 2)), np.ones((1, 2)))],
)
def test_hypervolume_refuses_mismatched_shapes(points, reference):
    with pytest.raises(ValueError, match="reference"):
        hypervolume(points, reference)


@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_agrees_with_optuna(k):
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # a private module: skip only this cross-check where Optuna lacks or moved it
        pytest.skip(
            "Optuna moved its private optuna._hypervolume.compute_hypervolume; the brute-force checks above still hold"
        )
    rng = np.random.default_rng(k)
    for _ in range(5):
        points = rng.random((20, k))
        reference = np.full(k, 0.9)
        # Optuna refuses points outside the reference box; they add nothing to ours.
        inside = points[np.all(points <= reference, axis=1)]
        assert hypervolume(points, reference) == pytest.approx(compute_hypervolume(inside, reference), rel=1e-12)


def seeds(means: list[list[float]], n_seeds: int, spread: float, seed: int = 0) -> np.ndarray:
    """(n_designs, n_seeds, k) samples: each design's mean plus uniform noise of half-width `spread`."""
    rng = np.random.default_rng(seed)
    centre = np.array(means, dtype=float)[:, None, :]
    return centre + rng.uniform(-spread, spread, size=(len(means), n_seeds, centre.shape[-1]))


def test_front_probability_of_clear_winners_and_losers():
    # 0 dominates 1 on every seed; 2 and 3 trade places within their noise; 4 is a trade-off off to the side.
    samples = seeds([[0.0, 0.0], [5.0, 5.0], [2.0, -1.0], [2.05, -0.95], [-3.0, 9.0]], n_seeds=5, spread=0.3)
    samples[2, 4] = np.nan  # a missing seed
    probability = front_probability(samples, 400, np.random.default_rng(1))
    assert probability.shape == (5,)
    assert probability[0] == 1.0 and probability[1] == 0.0 and probability[4] == 1.0
    assert 0 < probability[2] < 1 and 0 < probability[3] < 1
    assert np.all((probability >= 0) & (probability <= 1))


def test_front_probability_is_reproducible_and_honours_feasibility():
    samples = seeds([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.6, 0.6]], n_seeds=4, spread=0.4)
    first = front_probability(samples, 300, np.random.default_rng(7))
    np.testing.assert_array_equal(first, front_probability(samples, 300, np.random.default_rng(7)))
    assert not np.array_equal(first, front_probability(samples, 300, np.random.default_rng(8)))
    feasible = np.array([True, True, False, True])
    masked = front_probability(samples, 300, np.random.default_rng(7), feasible)
    assert masked[2] == 0.0 and masked[3] >= first[3]


def test_front_probability_with_one_seed_or_none():
    samples = np.full((3, 3, 2), np.nan)
    samples[0, 1] = [0.0, 1.0]  # one seed: kept as is in every resample
    samples[1, 0] = [0.5, 1.5]  # one seed, dominated by design 0
    # design 2 has no seeds at all
    np.testing.assert_array_equal(front_probability(samples, 50, np.random.default_rng(0)), [1.0, 0.0, 0.0])


def test_hypervolume_interval_contains_its_estimate():
    samples = seeds([[0.2, 0.8], [0.8, 0.2], [0.5, 0.5], [0.9, 0.9]], n_seeds=6, spread=0.1)
    reference = np.ones(2)
    estimate, low, high = hypervolume_interval(samples, reference, 300, np.random.default_rng(3))
    assert estimate == pytest.approx(hypervolume(samples.mean(axis=1), reference))
    assert low < estimate < high
    narrower = hypervolume_interval(samples, reference, 300, np.random.default_rng(3), confidence=0.5)
    assert low <= narrower[1] <= narrower[2] <= high


def test_hypervolume_interval_is_the_basic_bootstrap_that_undoes_the_selection_bias():
    """Many noisy designs: the fronts of resampled means look better than that of the means (the percentile
    interval is centred above the estimate); the basic interval reflects the shift, below it."""
    rng = np.random.default_rng(7)
    true = rng.uniform(0.2, 0.8, size=(30, 1, 3))
    samples = true + rng.normal(0, 0.15, size=(30, 5, 3))
    estimate, low, high = hypervolume_interval(samples, np.ones(3), 200, np.random.default_rng(1))
    from ablations.pareto import _bootstrap_means  # the same resampling, to recompute the percentiles

    volumes = [hypervolume(m, np.ones(3)) for m in _bootstrap_means(samples, 200, np.random.default_rng(1))]
    q_low, q_high = np.percentile(volumes, [2.5, 97.5])
    assert (low, high) == pytest.approx((2 * estimate - q_high, 2 * estimate - q_low))
    assert np.mean(volumes) > estimate > hypervolume(true[:, 0], np.ones(3))  # noise inflates, resampling more
    assert (low + high) / 2 < estimate < (q_low + q_high) / 2  # the basic interval is moved back below


def test_hypervolume_interval_is_degenerate_without_seed_noise():
    samples = np.repeat(np.array([[[0.2, 0.8, 0.5]], [[0.8, 0.2, 0.4]], [[0.5, 0.5, 0.1]]]), 4, axis=1)
    estimate, low, high = hypervolume_interval(samples, np.ones(3), 50, np.random.default_rng(0))
    assert low == high == pytest.approx(estimate)
    assert estimate == pytest.approx(hypervolume(samples[:, 0], np.ones(3)))


def test_bootstrap_refuses_bad_arguments():
    with pytest.raises(ValueError, match="samples"):
        front_probability(np.zeros((3, 2)), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="feasible"):
        front_probability(np.zeros((3, 2, 2)), 10, np.random.default_rng(0), np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="confidence"):
        hypervolume_interval(np.zeros((3, 2, 2)), np.ones(2), 10, np.random.default_rng(0), confidence=1.0)
