"""The per-table figures on plain numbers: two seeds drawn as their values, the Pareto frontier only where
intervals separate, equal costs spread apart on a relative axis that does not magnify a small gap, and the
figures' bytes equal on a redraw."""

import math

import pytest

from ablations.reporting import figures
from ablations.reporting.stats import summarize


def test_two_seeds_span_their_values_not_a_t_interval():
    assert figures.spread(summarize([1.0, 2.0])) == pytest.approx((1.0, 2.0))
    three = summarize([10.0, 12.0, 14.0])
    assert figures.spread(three) == (three.lo, three.hi)
    assert figures.spread(summarize([5.0, 5.0, 5.0])) is None  # equal values: no zero-width interval
    assert figures.spread(summarize([5.0])) is None
    # the t-interval of [1, 2] reaches below 0; the two values do not
    assert figures.truncated([summarize([1.0, 2.0]), summarize([0.5, 1.0, 30.0])]) == 1


def test_frontier_only_where_intervals_separate():
    close = [summarize([10.0, 11.0, 12.0]), summarize([10.2, 11.1, 12.0]), summarize([9.9, 11.2, 11.8])]
    assert figures.frontier([1.0, 1.004, 1.004], close) == []  # every interval overlaps: no frontier at all
    apart = [summarize([10.0, 10.5, 11.0]), summarize([20.0, 20.5, 21.0]), summarize([5.0, 5.5, 6.0])]
    # b costs more than a and is worse beyond its interval; c costs most and is better: a and c form the frontier
    assert figures.frontier([1.0, 1.5, 2.0], apart) == [0, 2]


def test_dodge_spreads_equal_costs_only():
    xs = figures.dodge([100.0, 100.4, 100.4, 100.4], span=10.4)
    assert xs[0] == 100.0 and len(set(xs)) == 4
    assert math.fsum(xs[1:]) / 3 == pytest.approx(100.4)  # centred on their cost
    assert figures.dodge([100.0, 150.0], span=60.0) == [100.0, 150.0]


def test_cost_figure_spreads_levels_and_draws_no_frontier_on_overlap():
    s = [summarize([8.0, 8.2, 8.4]), summarize([8.1, 8.3, 8.6]), summarize([7.9, 8.4, 8.5]), summarize([7.8, 8.0])]
    gflops = [0.031, 0.031, 0.031, 0.0308]  # three gates of equal cost, no SE 0.6 % cheaper
    ms = [4.4, 4.3, 3.1, 2.7]
    fig = figures.cost(["sigmoid", "tanh", "relu", "no SE"], s, {"GFLOPs": gflops, "params (M)": [0.27] * 4,
                       "ms per image": ms}, ylabel="err", title="t")  # fmt: skip
    flops, params, time = fig.axes
    points = [line for line in flops.lines if line.get_marker() == "o"]
    xs = [float(line.get_xdata()[0]) for line in points]
    assert len(set(xs[:3])) == 3  # equal costs spread apart
    lo, hi = flops.get_xlim()
    assert hi - lo >= 10.0 and max(xs) - min(xs) < 0.2 * (hi - lo)  # a 0.6 % gap is not the whole axis
    assert not [line for line in flops.lines if line.get_linestyle() == "--"]  # overlapping: no frontier
    assert "% of the cheapest" in flops.get_xlabel() and time.get_xlabel().startswith("ms per image")
    # no SE's two seeds: the two values joined (dotted), not a t-interval
    (two,) = [line for line in flops.lines if line.get_linestyle() == ":"]
    assert sorted(two.get_ydata()) == pytest.approx([7.8, 8.0])


def test_cost_figure_drops_a_cost_nobody_measured():
    s = [summarize([10.0, 12.0, 14.0]), summarize([20.0, 21.0, 22.0])]
    fig = figures.cost(["a", "b"], s, {"GFLOPs": [0.02, 0.03], "ms": [math.nan, math.nan]}, ylabel="e", title="t")
    (ax,) = fig.axes
    (front,) = [line for line in ax.lines if line.get_linestyle() == "--"]  # b is worse beyond the intervals
    assert list(front.get_ydata()) == [12.0]


def test_curves_and_seeds_figures_plot_their_numbers(tmp_path):
    fig = figures.curves(["a", "b"], [[{1: 5.0, 2: 4.0}, {1: 6.0, 2: 3.0}], [{1: 7.0}]], ylabel="val", title="t")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # one band (n ≥ 2)
    assert list(ax.lines[0].get_ydata()) == [5.5, 3.5]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # two runs: between their values
    assert max(band) == pytest.approx(6.0) and min(band) == pytest.approx(3.0)
    fig = figures.seeds(["a", "b"], [{0: 10.0, 1: 12.0}, {0: 11.0}], [[], [1]], 90.0, ylabel="err", title="t")
    (ax,) = fig.axes
    (seed0,) = [line for line in ax.lines if line.get_label() == "seed 0"]
    (seed1,) = [line for line in ax.lines if line.get_label() == "seed 1"]
    assert list(seed0.get_ydata()) == [10.0, 11.0]  # seed 0 joined across levels
    assert seed1.get_ydata()[0] == 12.0 and math.isnan(seed1.get_ydata()[1])  # a gap where it diverged
    (cross,) = [line for line in ax.lines if line.get_marker() == "x"]
    assert list(cross.get_ydata()) == [90.0]  # the diverged seed 1 of b, at chance
    first = figures.save(fig, tmp_path / "a.png").read_bytes()
    again = figures.seeds(["a", "b"], [{0: 10.0, 1: 12.0}, {0: 11.0}], [[], [1]], 90.0, ylabel="err", title="t")
    assert figures.save(again, tmp_path / "b.png").read_bytes() == first
