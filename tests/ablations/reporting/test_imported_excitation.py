"""Figs. 6-7 on an imported network and an image folder: the paper's blocks (or the same roles in another network),
the paper's classes where the folder has them, the figures and CSV written."""

import pytest
import torch

from ablations.data.imagenet import PAPER_CLASSES, class_name, open_folder, synsets
from ablations.reporting.evaluate import imported
from ablations.reporting.imported import PAPER_BLOCKS, excitation_imported, paper_blocks
from senet_core import build_model
from tests._support.commands import run_error, run_text
from tests._support.images import CLIFF, GOLDFISH, PLANE, PUG, SIZE, TENCH, write_folder
from tests._support.networks import save, trained_like


def test_the_papers_blocks_are_se_resnet50s_and_other_nets_get_the_same_roles():
    with torch.device("meta"):
        assert paper_blocks(build_model("se_resnet50")) == (list(PAPER_BLOCKS), None)
        blocks, note = paper_blocks(build_model("se_resnet101"))
    assert blocks == ["SE_2_3", "SE_3_4", "SE_4_23", "SE_5_1", "SE_5_2", "SE_5_3"] and "SE_4_23" in note
    blocks, _ = paper_blocks(build_model("se_resnet20"))
    assert blocks == ["SE_2_3", "SE_3_3", "SE_4_1", "SE_4_2", "SE_4_3"]


def test_the_papers_classes_by_wordnet_id():
    index = {name: synsets().index(wnid) for name, wnid in PAPER_CLASSES.items()}
    assert index == {"goldfish": 1, "pug": 254, "plane": 726, "cliff": 972}
    assert [class_name(w) for w in PAPER_CLASSES.values()] == list(PAPER_CLASSES)  # each name is the first lemma


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("imported") / "w1000.pth"
    return save(trained_like("se_resnet20", **{"model.num_classes": 1000}), path)


def _drawn(weights, root, tmp_path, classes=None):
    subject = imported("se_resnet20", {}, str(weights))
    folder = open_folder(f"imagefolder:{root}", subject.num_classes, SIZE)
    return excitation_imported(subject, folder, tmp_path / "out", classes=classes, per_class=3, workers=0)


def test_the_papers_classes_where_the_folder_has_them(weights, tmp_path):
    root = write_folder(tmp_path / "all", [TENCH, GOLDFISH, PUG, PLANE, CLIFF], per_class=3)
    drawn = _drawn(weights, root, tmp_path)
    assert drawn.classes == [1, 254, 726, 972] and drawn.names == ["goldfish", "pug", "plane", "cliff"]
    assert drawn.blocks == ["SE_2_3", "SE_3_3", "SE_4_1", "SE_4_2", "SE_4_3"]
    assert [p.name for p in drawn.paths] == ["excitation_profiles.png", "excitation_spread.png",
                                             "excitation_eta2.png", "excitation_blocks.csv"]  # fmt: skip
    assert all(p.stat().st_size > 0 for p in drawn.paths)
    assert len(drawn.paths[3].read_text().splitlines()) == 1 + 9  # header + every SE block of ResNet-20

    some = write_folder(tmp_path / "some", [TENCH, GOLDFISH, CLIFF], per_class=2)
    drawn = _drawn(weights, some, tmp_path)
    assert drawn.names == ["goldfish", "cliff"] and "lacks the paper's pug, plane" in drawn.notes[1]
    drawn = _drawn(weights, some, tmp_path, classes=["tench", GOLDFISH, "972"])
    assert drawn.classes == [0, 1, 972]


def test_plain_folders_draw_the_first_four(tmp_path):
    path = save(trained_like("se_resnet20", **{"model.num_classes": 5}), tmp_path / "w5.pth")
    root = write_folder(tmp_path / "plain", ["a", "b", "c", "d", "e"], per_class=2)
    drawn = _drawn(path, root, tmp_path)
    assert drawn.names == ["a", "b", "c", "d"] and "none of the paper's classes" in drawn.notes[1]


def test_cli(weights, tmp_path, capsys):
    root = write_folder(tmp_path / "data", [GOLDFISH, PUG], per_class=2)
    out = run_text("excitation", "--model", "se_resnet20", "--weights", str(weights), "--data", f"imagefolder:{root}",
                   "--out", str(tmp_path / "fig"), "--per-class", "2", capsys=capsys)  # fmt: skip
    assert "blocks SE_2_3, SE_3_3, SE_4_1, SE_4_2, SE_4_3; classes goldfish, pug and the mean" in out
    assert (tmp_path / "fig" / "excitation_profiles.png").is_file()
    err = run_error("excitation", "--model", "se_resnet20", "--weights", str(weights), "--data",
                    f"imagefolder:{root}", "--classes", "plane", "--workers", "0", capsys=capsys)  # fmt: skip
    assert err.startswith("--classes: plane (726) has no folder in ")
    err = run_error("excitation", "demo", "--classes", "goldfish", capsys=capsys)
    assert err.startswith("--classes: ['goldfish'] is not allowed; allowed: class indices")
