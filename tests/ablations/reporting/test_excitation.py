"""The role-of-excitation analysis (paper §7.2) on a tiny model trained for real: one curve per class and block,
the class-specificity score, and `excitation_report` from a study name."""

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from ablations.errors import SenetError
from ablations.reporting import figures
from ablations.reporting.excitation import (
    Target,
    analyze,
    class_share,
    excitation_report,
    last_per_stage,
    load_model,
    reference_trial,
)
from ablations.training.engine import train

SPEC = {
    "name": "tiny_probe",
    "description": "A tiny synthetic study whose reference model the probe reads.",
    "base": {
        "model": {"name": "resnet20"},
        "se": {"reduction": 4},
        "data": {
            "dataset": "synthetic",
            "val_size": 60,
            "synthetic_train": 300,
            "synthetic_test": 30,
            "synthetic_size": 8,
            "synthetic_classes": 4,
        },
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 64, "lr": 0.05},
    },  # fmt: skip
    "grid": {"se.excitation": ["tanh", "sigmoid"]},
    "seeds": [3, 1],
}
BLOCKS = ["SE_2_3", "SE_3_3", "SE_4_3"]  # the last block of each stage of ResNet-20
WIDTHS = {"SE_2_3": 16, "SE_3_3": 32, "SE_4_3": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The study's reference trial (sigmoid, first seed) trained for one epoch into its run folder."""
    root = tmp_path_factory.mktemp("excitation")
    path = root / "tiny_probe.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    trial = reference_trial(str(path), {})
    results = root / "results"
    run_dir = results / "runs" / trial.key
    train(trial.config, run_dir, log=lambda _: None)
    return path, results, trial, Target(trial.config, trial.key, run_dir / "checkpoint.pt", "tiny")


def test_reference_trial_is_the_standard_se_at_the_first_seed(trained):
    _, _, trial, _ = trained
    assert trial.label == "se.excitation=sigmoid" and trial.seed == 1


def test_analysis_gives_one_curve_per_class_and_block(trained):
    _, _, _, target = trained
    model, loader, num_classes = load_model(target)
    assert num_classes == 4
    ex = analyze(model, loader, [0, 2, 3], per_class=10)
    assert ex.blocks == BLOCKS and ex.classes == [0, 2, 3] and ex.images == [10, 10, 10]
    for b in BLOCKS:
        assert ex.mean[b].shape == ex.std[b].shape == (3, WIDTHS[b]) and ex.overall[b].shape == (WIDTHS[b],)
        assert ((ex.mean[b] > 0) & (ex.mean[b] < 1)).all()  # sigmoid gates
    assert len(ex.specificity) == 9 and all(0 <= s <= 1 for s in ex.specificity.values())
    fig = figures.excitation_profiles(ex.blocks, ["a", "b", "c"], ex.mean, ex.overall, title="t")
    assert [ax.get_title() for ax in fig.axes] == BLOCKS
    for ax in fig.axes:  # one line per class plus the all-class mean, each over every channel
        assert [line.get_label() for line in ax.lines] == ["a", "b", "c", "all classes"]
        assert all(len(line.get_xdata()) == WIDTHS[ax.get_title()] for line in ax.lines)
    fig = figures.excitation_spread(ex.blocks, ["a", "b", "c"], ex.mean, ex.std, title="t")
    assert len(fig.axes) == 9 and all(len(ax.lines) == 1 and len(ax.collections) == 1 for ax in fig.axes)


def test_excitation_report_from_a_study(trained, tmp_path):
    path, results, _, _ = trained
    paths = excitation_report(str(path), results=results, tracking_uri=None, out=tmp_path, classes=[1, 3], overrides={})
    names = [p.name for p in paths]
    assert names == ["excitation_profiles.png", "excitation_spread.png", "excitation_specificity.png",
                     "excitation_specificity.csv"]  # fmt: skip
    for p in paths[:3]:
        assert p.read_bytes().startswith(b"\x89PNG") and imread(p).ndim == 3
    rows = paths[3].read_text().splitlines()
    assert rows[0] == "block,depth,class_share" and rows[1].startswith("SE_2_1,1,") and len(rows) == 10


def test_user_errors(trained, tmp_path):
    path, results, _, target = trained
    model, loader, _ = load_model(target)
    with pytest.raises(SenetError, match="--classes: 7 is not a class; allowed: 0..3"):
        excitation_report(str(path), results=results, tracking_uri=None, out=tmp_path, classes=[7], overrides={})
    with pytest.raises(SenetError, match="no checkpoint"):
        excitation_report(str(path), results=tmp_path, tracking_uri=None, out=tmp_path, classes=None, overrides={})
    with pytest.raises(SenetError, match="no tracking store"):
        excitation_report("0123abcd", results=tmp_path, tracking_uri=None, out=tmp_path, classes=None, overrides={})


def test_class_share_by_hand():
    # values 0, 2 (class 0) and 4, 6 (class 1): mean 3, total SS 9+1+1+9 = 20, between 2·2² + 2·2² = 16 → 0.8
    values = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [6.0, 1.0]])  # the constant channel adds nothing
    assert class_share(values, np.array([0, 0, 1, 1])) == pytest.approx(0.8)
    assert class_share(np.ones((4, 3)), np.array([0, 0, 1, 1])) == 0.0


def test_last_block_per_stage():
    names = ["SE_2_1", "SE_2_2", "SE_3_1", "SE_10_1", "SE_10_2", "SE_3_2"]
    assert last_per_stage(names) == ["SE_2_2", "SE_3_2", "SE_10_2"]
