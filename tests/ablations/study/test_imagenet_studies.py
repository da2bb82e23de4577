"""The ImageNet studies of Tables 10-16: each is its CIFAR twin's design on SE-ResNet-50 with the paper's ablation
recipe, one trial a DDP group of 8 devices, and its networks cost what the paper prints (no training here)."""

from __future__ import annotations

import pytest

from ablations.cli import main
from ablations.config import Host
from ablations.costs import cost
from ablations.profile import ProfileRow
from ablations.reporting.paper_match import paper_match, published, table_names
from ablations.study.load import load_spec
from ablations.study.recipes import RECIPES
from ablations.study.trials import expand

# The CIFAR twins' keys hold the digest of CIFAR's files: tiny ones stand in for them.
pytestmark = pytest.mark.usefixtures("default_cifar")

TWINS = ["reduction_ratio", "squeeze", "excitation", "stages", "integration", "inner_3x3", "no_squeeze"]
# Trials whose paper row prints params (and GFLOPs): every row of Tables 10, 13, 15 and 16; in Tables 11, 12 and 14
# only the no-SE baseline borrowed from Table 10 has them (Table 12's, the one of those with a no-SE level).
PRICED = {"reduction_ratio": 6, "squeeze": 0, "excitation": 1, "stages": 5, "integration": 0, "inner_3x3": 2,
          "no_squeeze": 3}  # fmt: skip
RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "plateau_patience", "plateau_max_drops",
               "label_smoothing")  # fmt: skip


@pytest.mark.parametrize("twin", TWINS)
def test_an_imagenet_study_has_its_cifar_twins_design_and_table_at_one_seed(twin):
    cifar, imagenet = load_spec(twin), load_spec(f"imagenet_{twin}")
    assert imagenet.name == f"imagenet_{twin}" and imagenet.recipe == "imagenet_ablation"
    assert (imagenet.grid, imagenet.extra, imagenet.mirrors, imagenet.reference) == (
        cifar.grid, cifar.extra, cifar.mirrors, cifar.reference
    )  # fmt: skip
    assert imagenet.seeds == [0] and cifar.seeds == [0, 1, 2]
    ours, theirs = expand(imagenet), expand(cifar)
    assert [t.label for t in ours] == [t.label for t in theirs if t.seed == 0]
    assert len(ours) == len(theirs) // 3 and len(expand(imagenet, seeds=3)) == len(theirs)
    points = len(imagenet.points())
    assert f"{points} configurations x 1 seed = {points} runs" in imagenet.description
    assert "--set data.root=/path/to/imagenet" in imagenet.description


@pytest.mark.parametrize("twin", TWINS)
def test_every_imagenet_trial_is_se_resnet50_on_8_devices_with_the_papers_recipe(twin):
    recipe = RECIPES["imagenet_ablation"]
    for t in expand(load_spec(f"imagenet_{twin}"), host=Host("cuda")):
        cfg = t.config
        assert (cfg.model.name, cfg.se.bias, cfg.data.dataset, cfg.data.root) == (
            "resnet50",
            False,
            "imagefolder",
            None,
        )
        assert (cfg.data.image_size, cfg.data.workers, cfg.data.val_size) == (224, 8, recipe["data.val_size"])
        assert {k: getattr(cfg.train, k) for k in RECIPE_KEYS} == {k: recipe[f"train.{k}"] for k in RECIPE_KEYS}
        assert (cfg.train.devices, cfg.train.batch_size, cfg.train.batch_size // cfg.train.devices) == (8, 256, 32)
        assert (cfg.train.schedule, cfg.train.lr, cfg.train.label_smoothing) == ("plateau", 0.1, 0.1)
        # a group splits every batch evenly: the short last one is dropped, and no CUDA graph holds the all-reduce
        assert cfg.train.drop_last and cfg.train.compile == "off"


@pytest.mark.parametrize("twin", TWINS)
def test_imagenet_trials_cost_the_params_and_gflops_the_paper_prints_for_their_row(twin):
    spec = load_spec(f"imagenet_{twin}")
    rows = published(table_names(spec))
    priced = 0
    for t in expand(spec):
        paper = paper_match(t.config, spec.varied_keys(), rows)
        assert paper is not None, t.label
        c = cost(t.config)
        ours = ProfileRow(t.config.model.name, {}, t.config.data.image_size, c.params, c.gflops, paper)
        assert ours.params_ok is not False, (t.label, c.params, paper.params_m)  # within 0.1M at the paper's 0.1M
        assert ours.gflops_ok is not False, (t.label, c.gflops, paper.gflops)
        priced += ours.params_ok is True
    assert priced == PRICED[twin]


def test_table_10s_counts_are_exact_where_reference_says_and_within_a_tenth_elsewhere():
    params = {t.label: cost(t.config).params for t in expand(load_spec("imagenet_reduction_ratio"))}
    assert params["no SE"] == 25_557_032 and params["se.reduction=16"] == 28_071_976  # REFERENCE.md §4, no FC bias
    # Eq. 5: (2/r) Σ N_s C_s² extra weights, 2 514 944 at r = 16
    assert all(params[f"se.reduction={r}"] - params["no SE"] == 2_514_944 * 16 // r for r in (2, 4, 8, 16, 32))


def test_a_dry_run_without_data_root_refuses_in_one_line_naming_it(tmp_path, capsys):
    results = tmp_path / "r"
    assert main(["sweep", "imagenet_reduction_ratio", "--dry-run", "--results", str(results)]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err == ("senet-ablate: error: data.root: required for imagefolder (se.reduction=2); a folder with train/ "
                   "and val/")  # fmt: skip
    assert not results.exists()
    (tmp_path / "inet" / "train" / "n01").mkdir(parents=True)
    argv = ["sweep", "imagenet_reduction_ratio", "--dry-run", "--results", str(results)]
    assert main([*argv, "--set", f"data.root={tmp_path / 'inet'}"]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert f"data.root: {tmp_path / 'inet'} has no val/ folder (se.reduction=2)" in err


def test_a_dry_run_with_an_imagenet_root_plans_every_trial_and_writes_nothing(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "inet" / split / "n01").mkdir(parents=True)
    results = tmp_path / "r"
    argv = ["sweep", "imagenet_reduction_ratio", "--dry-run", "--results", str(results)]
    assert main([*argv, "--set", f"data.root={tmp_path / 'inet'}"]) == 0
    out = capsys.readouterr().out
    assert "6 trials, 1800 epochs in all" in out and "nothing was written (dry run)" in out
    assert all(f"se.reduction={r}" in out for r in (2, 4, 8, 16, 32)) and "no SE" in out
    assert not results.exists()
