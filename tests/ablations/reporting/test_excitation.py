"""The role-of-excitation analysis (paper §7.2): the per-channel η² statistics on constructed gate arrays, the
mapping of the paper's block names, and the analysis of a tiny model trained for real, from a study name."""

import math

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.stats import chi2

from ablations.errors import SenetError
from ablations.reporting import excitation_figures
from ablations.reporting.excitation import (
    Target,
    analyze,
    excitation_report,
    last_per_stage,
    load_model,
    reference_trial,
)
from ablations.reporting.gate_stats import block_stats, class_share, eta_squared
from ablations.reporting.paper_match import paper_blocks
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.status import ReadOptions
from ablations.training.engine import train
from senet_core import SEBlock, build_model, se_blocks
from tests._support.configs import write_spec

BLOCKS = ["SE_2_3", "SE_3_3", "SE_4_3"]  # the last block of each stage of ResNet-20
WIDTHS = {"SE_2_3": 16, "SE_3_3": 32, "SE_4_3": 64}
CSV_HEADER = ("block,depth,stage,index,channels,constant,eta2_median,eta2_q1,eta2_q3,eta2_median_ci_lo,"
              "eta2_median_ci_hi,null_median,null_p95,p,mean_gate,share_above_0.9,pooled_class_share")  # fmt: skip


# -- statistics on constructed gates ------------------------------------------------------------------------------


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


def test_pooled_share_is_blind_to_channels_that_barely_vary():
    """One loud class-agnostic channel hides nine quiet, perfectly class-specific ones from the pooled share."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    quiet = 0.97 + 0.001 * labels[:, None] + np.zeros((100, 9))  # saturated near 1, shifted by class
    loud = rng.normal(0.5, 0.2, size=(100, 1))
    gates = np.hstack([loud, quiet])
    assert class_share(gates, labels) < 0.05
    s = block_stats(gates, labels, permutations=50, bootstraps=50)
    assert s.median == pytest.approx(1.0) and s.p == pytest.approx(1 / 51)
    assert s.saturated == pytest.approx(0.9 + 0.1 * (loud > 0.9).mean())


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
    s = block_stats(gates, labels, permutations=200, bootstraps=100)
    # Without any class effect a channel's η² of K = 4 classes over n = 300 images is about χ²₃ / (n - 1): its
    # median is 2.366 / 299 = 0.0079, not 0; the null of the median over channels sits there.
    assert s.null_median == pytest.approx(chi2.median(3) / 299, abs=0.001) and s.null_hi < 0.015
    assert s.median < 0.015 and s.ci_lo <= s.median <= s.ci_hi and s.q1 <= s.median <= s.q3
    assert block_stats(gates, labels, permutations=200, bootstraps=100) == s  # seeded: equal input, equal numbers
    # Under the null the permutation p-value is uniform: over 20 independent blocks few fall below 0.05.
    ps = [block_stats(rng.uniform(size=(300, 64)), rng.integers(0, 4, 300), permutations=100, bootstraps=1).p
          for _ in range(20)]  # fmt: skip
    assert sum(p < 0.05 for p in ps) <= 3 and 0.2 < float(np.median(ps)) < 0.8


def test_class_specific_gates_clear_the_null():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 40)
    gates = 0.5 + 0.1 * labels[:, None] * rng.uniform(0.5, 1.0, size=(1, 16)) + rng.normal(0, 0.02, size=(160, 16))
    s = block_stats(gates, labels, permutations=200, bootstraps=200)
    assert s.median > 0.9 and s.null_hi < 0.1 and s.p == pytest.approx(1 / 201)
    assert s.ci_lo <= s.median <= s.ci_hi and s.ci_hi - s.ci_lo < 0.05
    assert s.constant == 0 and s.channels == 16


# -- block names ----------------------------------------------------------------------------------------------------


def test_last_block_per_stage_from_se_blocks():
    blocks = [SEBlock(16).place(s, i) for s, i in ((2, 1), (2, 2), (3, 1), (10, 1), (10, 2), (3, 2))]
    assert last_per_stage(blocks) == ["SE_2_2", "SE_3_2", "SE_10_2"]
    model = build_model("se_resnet20", {})
    assert last_per_stage(list(se_blocks(model).values())) == BLOCKS


def test_paper_blocks_map_by_stage():
    resnet20 = {f"SE_{s}_{i}": (s, i) for s in (2, 3, 4) for i in (1, 2, 3)}
    got = {paper: (ours, where) for paper, _, ours, where in paper_blocks(resnet20)}
    assert got["SE_2_3"] == ("SE_2_3", "the last block of the first residual stage")
    assert got["SE_3_4"] == ("SE_3_3", "the last block of the second residual stage")
    assert got["SE_4_6"] == ("SE_4_3", "the last block of the third residual stage")
    assert got["SE_5_2"] == (None, "none: the network has no stage 5 (its SE stages: 2, 3, 4)")
    resnet50 = {f"SE_{s}_{i}": (s, i) for s, n in ((2, 3), (3, 4), (4, 6), (5, 3)) for i in range(1, n + 1)}
    rows = paper_blocks(resnet50)
    assert [ours for paper, _, ours, _ in rows] == [paper for paper, _, _, _ in rows]  # SE-ResNet-50: itself
    assert rows[4][1] == "block 2 of 3 of the fourth residual stage"


# -- a tiny model trained for real ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The study's reference trial (sigmoid, first seed) trained for one epoch into its run folder."""
    root = tmp_path_factory.mktemp("excitation")
    path = write_spec(root, "tiny_probe", grid={"se.excitation": ["tanh", "sigmoid"]}, seeds=[3, 1],
                      data={"val_size": 60, "synthetic_train": 300, "synthetic_classes": 4},
                      train={"epochs": 1, "lr": 0.05})  # fmt: skip
    spec = load_spec(path)
    trial = reference_trial(spec, expand(spec))
    results = root / "results"
    run_dir = results / "runs" / trial.key
    train(trial.config, run_dir, log=lambda _: None)
    return path, results, trial, Target(trial.config, trial.key, run_dir / "checkpoint.pt", "tiny")


def test_reference_trial_is_the_standard_se_at_the_first_seed(trained):
    _, _, trial, _ = trained
    assert trial.label == "se.excitation=sigmoid" and trial.seed == 1


def test_analysis_gives_one_curve_per_class_and_block_and_statistics_for_every_block(trained):
    _, _, _, target = trained
    model, loader, num_classes = load_model(target)
    assert num_classes == 4
    ex = analyze(model, loader, [0, 2, 3], per_class=10, permutations=20, bootstraps=20)
    assert ex.blocks == BLOCKS and ex.classes == [0, 2, 3] and ex.images == [10, 10, 10]
    for b in BLOCKS:
        assert ex.mean[b].shape == ex.std[b].shape == (3, WIDTHS[b]) and ex.overall[b].shape == (WIDTHS[b],)
        assert ((ex.mean[b] > 0) & (ex.mean[b] < 1)).all()  # sigmoid gates
    assert list(ex.stats) == list(ex.eta) == list(ex.positions) == list(ex.specificity)
    assert len(ex.stats) == 9 and ex.positions["SE_3_2"] == (3, 2)
    for b, s in ex.stats.items():
        assert s.channels == ex.eta[b].shape[0] and 0 <= s.saturated <= 1 and 0 < s.mean_gate < 1
        assert s.median == pytest.approx(float(np.nanmedian(ex.eta[b])))
    fig = excitation_figures.excitation_profiles(ex.blocks, ["a", "b", "c"], ex.mean, ex.overall, title="t")
    assert [ax.get_title() for ax in fig.axes] == BLOCKS
    for ax in fig.axes:  # one line per class plus the all-class mean, each over every channel
        assert [line.get_label() for line in ax.lines] == ["a", "b", "c", "all classes"]
        assert all(len(line.get_xdata()) == WIDTHS[ax.get_title()] for line in ax.lines)
    fig = excitation_figures.excitation_spread(ex.blocks, ["a", "b", "c"], ex.mean, ex.std, title="t")
    assert len(fig.axes) == 9 and all(len(ax.lines) == 1 and len(ax.collections) == 1 for ax in fig.axes)
    fig = excitation_figures.excitation_eta2(list(ex.stats), ex.eta, ex.stats, title="t")
    top, bottom = fig.axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == list(ex.stats)
    assert list(bottom.lines[1].get_ydata()) == [s.saturated for s in ex.stats.values()]


def test_excitation_report_from_a_study(trained, tmp_path):
    path, results, _, _ = trained
    paths = excitation_report(load_spec(path), ReadOptions(results=results), tmp_path, [1, 3])
    names = [p.name for p in paths]
    assert names == ["excitation_profiles.png", "excitation_spread.png", "excitation_eta2.png",
                     "excitation_blocks.csv"]  # fmt: skip
    for p in paths[:3]:
        assert p.read_bytes().startswith(b"\x89PNG") and imread(p).ndim == 3
    rows = paths[3].read_text().splitlines()
    assert rows[0] == CSV_HEADER and rows[1].startswith("SE_2_1,1,2,1,16,") and len(rows) == 10


def test_user_errors(trained, tmp_path):
    path, results, _, _ = trained
    with pytest.raises(SenetError, match="--classes: 7 is not a class; allowed: 0..3"):
        excitation_report(load_spec(path), ReadOptions(results=results), tmp_path, [7])
    with pytest.raises(SenetError, match="no checkpoint"):
        excitation_report(load_spec(path), ReadOptions(results=tmp_path), tmp_path, None)
    with pytest.raises(SenetError, match="no tracking store"):
        excitation_report("0123abcd", ReadOptions(results=tmp_path), tmp_path, None)
