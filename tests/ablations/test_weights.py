"""`model.weights`: files in every supported wrapping, the trial key by content, fine-tuning from imported weights,
and one clear line for every weights file that does not fit."""

import hashlib
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ablations import weights
from ablations.config import build_config
from ablations.errors import SenetError
from ablations.training.engine import _setup, train
from senet_core import build_model
from tests._support.configs import tiny_tree

timm = pytest.importorskip("timm")


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_model("se_resnet20", {"se.reduction": 4, "model.num_classes": 3})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_wrapping_reads_to_the_same_state(net, tmp_path):
    state = net.state_dict()
    files = {
        "plain.pth": state,
        "timm.pth.tar": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "torchvision.pt": {"model": state, "optimizer": {}, "epoch": 90},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        assert _same(weights.read_weights(str(tmp_path / name)).state, state), name
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert _same(weights.read_weights(str(tmp_path / "w.safetensors")).state, state)


def test_a_run_checkpoint_is_a_weights_file(tmp_path):
    cfg = build_config(tiny_tree(train={"epochs": 1}))
    train(cfg, tmp_path / "run", log=lambda _: None)
    converted = weights.read_weights(str(tmp_path / "run" / "checkpoint.pt"))
    assert converted.layout == "senet" and "stem.0.weight" in converted.state


def test_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nostate.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    cases = {
        "junk.pth": r"junk\.pth: cannot be read as weights \(.*\); it must be a torch\.save file",
        "nostate.pth": r"nostate\.pth: holds neither a state dict nor a `state_dict` / `model` entry",
        "junk.safetensors": r"junk\.safetensors: not a readable safetensors file",
        "missing.pth": r"missing\.pth: no such file; give a \.pth / \.safetensors file or timm:NAME",
    }
    for name, message in cases.items():
        with pytest.raises(SenetError, match=r"^model\.weights: .*" + message):
            weights.read_weights(str(tmp_path / name))


def _key(path) -> str:
    return build_config(tiny_tree(model={"name": "resnet20", "weights": str(path)})).config_hash()


def test_the_trial_key_counts_the_file_by_content(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "a.pth")
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "a.pth", tmp_path / "copy" / "same.pth")
    torch.manual_seed(1)
    torch.save(build_model("se_resnet20", {"se.reduction": 4, "model.num_classes": 3}).state_dict(), tmp_path / "b.pth")
    a, same, b = _key(tmp_path / "a.pth"), _key(tmp_path / "copy" / "same.pth"), _key(tmp_path / "b.pth")
    assert a == same != b
    assert a != build_config(tiny_tree()).config_hash()  # starting from weights is another trial
    identity = build_config(tiny_tree(model={"weights": str(tmp_path / "a.pth")})).identity()
    assert identity["model"]["weights"] == "sha256:" + hashlib.sha256((tmp_path / "a.pth").read_bytes()).hexdigest()
    timm_id = build_config(tiny_tree(model={"name": "resnet50", "weights": "timm:legacy_seresnet50"})).identity()
    assert timm_id["model"]["weights"] == f"timm:legacy_seresnet50@{timm.__version__}"


def test_an_unknown_timm_name_or_a_missing_file_stops_the_spec():
    with pytest.raises(SenetError, match=r"^model\.weights: 'timm:resnet9000' is not a supported network; allowed:"):
        build_config(tiny_tree(model={"weights": "timm:resnet9000"})).config_hash()
    with pytest.raises(SenetError, match=r"^model\.weights: /nonexistent\.pth: no such file"):
        build_config(tiny_tree(model={"weights": "/nonexistent.pth"})).config_hash()


def test_training_starts_from_the_imported_weights(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "w.pth")
    cfg = build_config(tiny_tree(model={"weights": str(tmp_path / "w.pth")}))
    run = _setup(cfg.resolved(), None)
    assert _same(run.model.state_dict(), net.state_dict())


def test_a_head_for_other_classes_is_refused_naming_the_field(tmp_path):
    torch.save(build_model("se_resnet20", {"se.reduction": 4}).state_dict(), tmp_path / "w10.pth")  # 10 classes
    cfg = build_config(tiny_tree(model={"weights": str(tmp_path / "w10.pth")}))  # the tiny data has 3 classes
    with pytest.raises(SenetError, match=r"^model\.num_classes: the weights in .*w10\.pth classify 10 classes, the "
                       r"model 3; set model\.num_classes=10"):  # fmt: skip
        _setup(cfg.resolved(), None)


def test_timm_names_are_fetched_through_timm(monkeypatch):
    seen = []

    def fake_create(name, pretrained):
        seen.append((name, pretrained))
        raise RuntimeError("Network is unreachable\nmore detail")

    monkeypatch.setattr(timm, "create_model", fake_create)
    with pytest.raises(SenetError, match=r"^model\.weights: timm could not provide pretrained weights for "
                       r"seresnet50\.a1_in1k \(RuntimeError: Network is unreachable\); fetch them once"):  # fmt: skip
        weights.read_weights("timm:seresnet50.a1_in1k")
    assert seen == [("seresnet50.a1_in1k", True)]


def test_notes_say_where_the_configuration_differs_from_the_source(tmp_path):
    state = timm.create_model("seresnet18").state_dict()  # torchvision layout: v1.5 and torchvision's stem pool
    model = build_model("se_resnet18", {"se.rounding": "divisible8", "model.stem_pool": "caffe"})
    torch.save(state, tmp_path / "tv.pth")
    notes = weights.load_weights(model, str(tmp_path / "tv.pth"), "se_resnet18",
                                 {"se.rounding": "divisible8", "model.stem_pool": "caffe"})  # fmt: skip
    assert notes == [f"{tmp_path / 'tv.pth'}: the source network computes with model.stem_pool=torchvision, this "
                     "model with caffe"]  # fmt: skip
