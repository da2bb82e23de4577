"""The role-of-excitation analysis (paper §7.2): the mapping of the paper's block names, and the analysis of a tiny
model trained for real, from a study name over its every finished seed and from one run."""

import shutil

import numpy as np
import pytest
from matplotlib.image import imread

from ablations.errors import SenetError
from ablations.reporting import excitation_figures
from ablations.reporting.excitation import (
    Target,
    analyze,
    excitation_report,
    last_per_stage,
    load_model,
    reference_trial,
    reference_trials,
    report_section,
    study_targets,
)
from ablations.reporting.paper_match import paper_blocks
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.status import ReadOptions
from ablations.training.engine import train
from senet_core import SEBlock, build_model, se_blocks
from tests._support.configs import write_spec

BLOCKS = ["SE_2_3", "SE_3_3", "SE_4_3"]  # the last block of each stage of ResNet-20
WIDTHS = {"SE_2_3": 16, "SE_3_3": 32, "SE_4_3": 64}
CSV_HEADER = ("block,depth,stage,index,channels,hidden,constant,omega2_median,omega2_q1,omega2_q3,omega2_median_ci_lo,"
              "omega2_median_ci_hi,null_median,null_p95,p,permutations,eta2_median,mean_gate,share_above_0.9,"
              "pooled_class_share")  # fmt: skip


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
    """The study's reference trial (sigmoid, first seed) trained for one epoch into its run folder, and its run
    folder copied to the second seed's (one training, two finished seeds: the pooling reads them as two)."""
    root = tmp_path_factory.mktemp("excitation")
    path = write_spec(root, "tiny_probe", grid={"se.excitation": ["tanh", "sigmoid"]}, seeds=[3, 1],
                      data={"val_size": 60, "synthetic_train": 300, "synthetic_classes": 4},
                      train={"epochs": 1, "lr": 0.05})  # fmt: skip
    spec = load_spec(path)
    trial = reference_trial(spec, expand(spec))
    results = root / "results"
    run_dir = results / "runs" / trial.key
    train(trial.config, run_dir, log=lambda _: None)
    second = next(t for t in reference_trials(spec, expand(spec)) if t.seed == 3)
    shutil.copytree(run_dir, results / "runs" / second.key)
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
        assert s.median == pytest.approx(float(np.nanmedian(ex.omega[b])))
        assert s.eta_median == pytest.approx(float(np.nanmedian(ex.eta[b]))) and s.median < s.eta_median
    assert target.config.se.reduction == 4  # the tiny spec's r: 16, 32, 64 channels → 4, 8, 16 hidden units
    assert ex.hidden == {b: {2: 4, 3: 8, 4: 16}[ex.positions[b][0]] for b in ex.stats}
    fig = excitation_figures.excitation_profiles(ex.blocks, ["a", "b", "c"], ex.mean, ex.overall, title="t")
    assert [ax.get_title() for ax in fig.axes] == BLOCKS
    for ax in fig.axes:  # one line per class plus the all-class mean, each over every channel
        assert [line.get_label() for line in ax.lines] == ["a", "b", "c", "all classes"]
        assert all(len(line.get_xdata()) == WIDTHS[ax.get_title()] for line in ax.lines)
    fig = excitation_figures.excitation_spread(ex.blocks, ["a", "b", "c"], ex.mean, ex.std, title="t")
    assert len(fig.axes) == 9 and all(len(ax.lines) == 1 and len(ax.collections) == 1 for ax in fig.axes)
    fig = excitation_figures.excitation_eta2(list(ex.stats), ex.omega, ex.stats, title="t")
    top, bottom = fig.axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == list(ex.stats)
    assert list(bottom.lines[1].get_ydata()) == [s.saturated for s in ex.stats.values()]


@pytest.mark.e2e  # 2,000 shuffles per block and seed: 15-40 s, kept out of make test's 10 minutes
def test_excitation_report_from_a_study(trained, tmp_path):
    path, results, _, _ = trained
    paths = excitation_report(load_spec(path), ReadOptions(results=results), tmp_path, [1, 3])
    names = [p.name for p in paths]
    assert names == ["excitation_profiles.png", "excitation_spread.png", "excitation_eta2.png",
                     "excitation_blocks.csv", "excitation_depth.png", "excitation_depth.csv"]  # fmt: skip
    for p in (*paths[:3], paths[4]):
        assert p.read_bytes().startswith(b"\x89PNG") and imread(p).ndim == 3
    rows = paths[3].read_text().splitlines()
    assert rows[0] == CSV_HEADER and rows[1].startswith("SE_2_1,1,2,1,16,4,0,") and len(rows) == 10
    assert rows[1].split(",")[15] == "2000"  # the default shuffles
    depth = [r.split(",") for r in paths[5].read_text().splitlines()]
    assert depth[0][:7] == ["seed", "block", "depth", "stage", "index", "channels", "hidden"] and len(depth) == 19
    assert [r[0] for r in depth[1::9]] == ["1", "3"] and depth[18][1:7] == ["SE_4_3", "9", "4", "3", "64", "16"]
    assert float(depth[1][7]) == float(rows[1].split(",")[7])  # the first seed's median ω², at full precision


@pytest.mark.e2e  # 2,000 shuffles per block and seed: 15-40 s, kept out of make test's 10 minutes
def test_the_report_section_pools_every_finished_seed_and_names_the_others(trained, tmp_path):
    path, results, _, _ = trained
    spec = load_spec(path)
    lines, paths = report_section(spec, expand(spec), results, tmp_path / "both")
    md = "\n".join(lines)
    assert "every finished seed: 2 (seeds 1, 3;" in md and "Not analysed" not in md
    assert "| SE_2_1 | 16 | 4 |" in md and "| SE_4_3 | 64 | 16 |" in md and "over 2 seeds" in md and "‡ |" not in md
    assert "**Depth trend.**" in md and "per stratum" in md and "| stage 3 | SE_3_1–SE_3_3 (3) | 8 |" in md
    assert [p.name for p in paths][-2:] == ["excitation_depth.png", "excitation_depth.csv"]
    partial = tmp_path / "results"
    shutil.copytree(results, partial)
    third = next(t for t in reference_trials(spec, expand(spec)) if t.seed == 3)
    (partial / "runs" / third.key / "result.json").unlink()  # its checkpoint alone: a run still training
    done, others = study_targets(spec, expand(spec), partial)
    assert [t.config.seed for t in done] == [1] and [t.key for t in others] == [third.key]
    md = "\n".join(report_section(spec, expand(spec), tmp_path / "empty", tmp_path / "none")[0])
    assert "Not drawn: no finished run of the reference model" in md


def test_user_errors(trained, tmp_path):
    path, results, _, _ = trained
    with pytest.raises(SenetError, match="--classes: 7 is not a class; allowed: 0..3"):
        excitation_report(load_spec(path), ReadOptions(results=results), tmp_path, [7])
    with pytest.raises(SenetError, match="no finished run of the reference model; train the trial first"):
        excitation_report(load_spec(path), ReadOptions(results=tmp_path), tmp_path, None)
    with pytest.raises(SenetError, match="no tracking store"):
        excitation_report("0123abcd", ReadOptions(results=tmp_path), tmp_path, None)
