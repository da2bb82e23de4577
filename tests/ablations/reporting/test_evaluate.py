"""`senet-ablate evaluate` end to end on tiny image folders the tests write: the error is the hand count of wrong
predictions, the interval is statsmodels' Wilson interval, ImageNet folders map through the 1000 synsets, the
released network from timm gets its configuration and published errors, and bad input is one line."""

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from ablations import weights
from tests._support.commands import run_error, run_json, run_text
from tests._support.images import CLIFF, GOLDFISH, PUG, hand_predictions, write_folder
from tests._support.networks import save, trained_like

timm = pytest.importorskip("timm")


def _check_rate(rate: dict, wrong: np.ndarray) -> None:
    n, errors = wrong.size, int(wrong.sum())
    low, high = proportion_confint(errors, n, alpha=0.05, method="wilson")
    assert (rate["errors"], rate["images"]) == (errors, n)
    assert rate["percent"] == pytest.approx(100 * errors / n)
    assert (rate["low"], rate["high"]) == pytest.approx((100 * low, 100 * high))
    assert rate["low"] <= rate["percent"] <= rate["high"]


def test_plain_folders_are_classes_in_sorted_order(tmp_path, capsys):
    model = trained_like("se_resnet20", **{"model.num_classes": 3})
    path = save(model, tmp_path / "tiny.pth")
    root = write_folder(tmp_path / "data", ["cat", "dog", "emu"], per_class=5)
    got = run_json("evaluate", "--model", "se_resnet20", "--weights", str(path), "--data", f"imagefolder:{root}",
                   capsys=capsys)  # fmt: skip
    labels, ranked = hand_predictions(model, root, {"cat": 0, "dog": 1, "emu": 2})
    wrong1 = ranked[:, 0] != labels
    assert 0 < wrong1.sum() < 15  # the hand count is not trivially all or nothing
    _check_rate(got["top1_err"], wrong1)
    _check_rate(got["top3_err"], ~(ranked[:, :3] == labels[:, None]).any(1))  # 3 classes: top-3, all right
    assert got["top3_err"]["errors"] == 0 and "top5_err" not in got
    assert (got["images"], got["class_folders"], got["imagenet_classes"]) == (15, 3, False)
    assert got["options"] == {"model.num_classes": 3} and got["published"] is None  # no SE-ResNet-20 was released
    assert got["weights_identity"] == weights.weights_identity(str(path))


def test_wordnet_folders_map_to_imagenet_indices_and_root_val_is_used(tmp_path, capsys):
    model = trained_like("se_resnet20", **{"model.num_classes": 1000})
    path = save(model, tmp_path / "tiny1000.pth")
    root = write_folder(tmp_path / "imagenet" / "val", [GOLDFISH, PUG, CLIFF], per_class=4)
    got = run_json("evaluate", "--model", "se_resnet20", "--weights", str(path), "--data",
                   f"imagefolder:{tmp_path / 'imagenet'}", capsys=capsys)  # fmt: skip
    labels, ranked = hand_predictions(model, root, {GOLDFISH: 1, PUG: 254, CLIFF: 972})
    assert got["imagenet_classes"] and got["data"] == str(root)
    _check_rate(got["top1_err"], ranked[:, 0] != labels)
    _check_rate(got["top5_err"], ~(ranked == labels[:, None]).any(1))


def test_timm_name_builds_the_released_network_and_shows_its_published_errors(tmp_path, capsys, monkeypatch):
    """`timm:legacy_seresnet50` with no --model: our SE-ResNet-50 in the released configuration; the outputs equal
    timm's network on the same images. timm's download is replaced by random weights (the tests are offline)."""
    torch.manual_seed(0)
    ref = timm.create_model("legacy_seresnet50").eval()
    monkeypatch.setattr(weights, "_timm_state", lambda name: ref.state_dict())
    root = write_folder(tmp_path / "data", [GOLDFISH, PUG], per_class=2)
    got = run_json("evaluate", "--weights", "timm:legacy_seresnet50", "--data", f"imagefolder:{root}",
                   capsys=capsys)  # fmt: skip
    assert got["model"] == "se_resnet50"
    assert got["options"]["model.stem_pool"] == "caffe" and got["options"]["model.stride_layout"] == "original"
    assert got["published"]["model"] == "SE-ResNet-50" and got["published"]["same_network"]
    assert (got["published"]["top1_err"], got["published"]["top5_err"]) == (22.37, 6.36)
    assert got["weights_identity"] == f"timm:legacy_seresnet50@{timm.__version__}" and got["notes"] == []
    labels, ranked = hand_predictions(ref, root, {GOLDFISH: 1, PUG: 254})
    _check_rate(got["top1_err"], ranked[:, 0] != labels)
    # With torchvision's stem pool the network is another one, and the output says so.
    got = run_json("evaluate", "--weights", "timm:legacy_seresnet50", "--set", "model.stem_pool=torchvision",
                   "--data", f"imagefolder:{root}", capsys=capsys)  # fmt: skip
    assert not got["published"]["same_network"]
    assert any("model.stem_pool=caffe, this model with torchvision" in n for n in got["notes"])


def test_text_output(tmp_path, capsys):
    path = save(trained_like("se_resnet20", **{"model.num_classes": 2}), tmp_path / "w.pth")
    root = write_folder(tmp_path / "data", ["a", "b"], per_class=2)
    out = run_text("evaluate", "--model", "se_resnet20", "--weights", str(path), "--data", f"imagefolder:{root}",
                   capsys=capsys)  # fmt: skip
    assert "top1  error" in out and "95% CI [" in out and "Wilson score 95% interval" in out


def test_bad_input_is_one_line(tmp_path, capsys):
    path = save(trained_like("se_resnet20", **{"model.num_classes": 2}), tmp_path / "w.pth")
    root = write_folder(tmp_path / "data", ["a", "b", "c"], per_class=1)
    data = f"imagefolder:{root}"
    cases = [
        (["--model", "se_resnet20", "--weights", str(path)], "evaluate: give --weights"),
        (["--weights", str(path), "--data", data], "--model: required with a weights file"),
        (["--model", "se_resnet20", "--weights", str(tmp_path / "nope.pth"), "--data", data], "nope.pth: no such file"),
        (["--model", "se_resnet20", "--weights", str(path), "--data", str(root)], "--data: '"),
        (["--model", "se_resnet20", "--weights", str(path), "--data", data],
         "--data: 3 class folders but the model has 2 classes"),
        (["--model", "resnet20", "--weights", str(path), "--data", data], "model.weights: " + str(path)
         + ": unexpected key stages.0.0.se.fc1.weight; the weights have SE blocks here"),
        (["--model", "se_resnet20", "--set", "model.num_classes=5", "--weights", str(path), "--data", data],
         "model.num_classes: the weights in"),
        (["--weights", "timm:legacy_senet154", "--data", data], "model.weights: 'timm:legacy_senet154' is not a "
         "supported network; allowed: resnet18"),
    ]  # fmt: skip
    for args, message in cases:
        assert message in run_error("evaluate", *args, "--workers", "0", capsys=capsys)
