"""Trial identity: everything that changes a result, nothing that does not (issue "exactly once", item 12)."""

import pytest

from ablations.config import IDENTITY_VERSION, Host, RunConfig, TrainSection, build_config, check_sizes, unflatten
from ablations.errors import SenetError
from ablations.study.recipes import RECIPES
from ablations.study.spec import check_value
from tests._support.configs import tiny_config, tiny_tree


def test_keys_are_stable():
    """Keys recorded at identity version 2. A change here orphans every result recorded before it: make it on
    purpose (bump IDENTITY_VERSION) or not at all."""
    assert IDENTITY_VERSION == 2
    assert tiny_config().resolved(Host("cpu")).config_hash() == "e5cdf0d099ef"
    table12 = build_config(unflatten({**RECIPES["cifar_fast"], "model.name": "resnet56", "data.dataset": "cifar10",
                                      "se.bias": False}))  # fmt: skip
    assert table12.resolved(Host("cuda")).config_hash() == "c91a069346fa"


def test_a_new_field_at_its_default_keeps_every_key(monkeypatch):
    """Adding a config field with a default used to change every key, orphaning all earlier results."""
    before = tiny_config().config_hash()

    class Newer(TrainSection):
        ema_decay: float | None = None  # a field added later, at its default

    class NewerConfig(RunConfig):
        train: Newer = Newer()

    newer = NewerConfig.model_validate(tiny_tree())
    assert newer.config_hash() == before
    assert NewerConfig.model_validate(tiny_tree(train={"ema_decay": 0.999})).config_hash() != before


def test_auto_settings_resolve_into_the_key():
    """A CPU fp32 run and a GPU bf16 run of one spec used to share a key ("auto" was hashed)."""
    cfg = tiny_config()
    cpu, gpu = cfg.resolved(Host("cpu")), cfg.resolved(Host("cuda"))
    assert (cpu.train.device, cpu.train.precision, cpu.train.channels_last) == ("cpu", "fp32", True)
    assert (gpu.train.device, gpu.train.precision, gpu.train.channels_last) == ("cuda", "bf16", True)
    assert cpu.config_hash() != gpu.config_hash()
    assert cpu.config_hash() == tiny_config(train={"device": "cpu", "precision": "fp32"}).resolved().config_hash()


def test_image_folders_are_told_apart_by_their_path(tmp_path):
    """data.root was not hashed: two image folders shared keys."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "link").symlink_to(a)

    def key(root):
        return tiny_config(data={"dataset": "imagefolder", "root": str(root)}).config_hash()

    assert key(a) != key(b)
    assert key(a) == key(tmp_path / "link")  # the same folder spelled another way


def test_bookkeeping_and_other_schedules_settings_do_not_change_the_key():
    base = tiny_config().config_hash()
    assert tiny_config(data={"workers": 9, "download": True}).config_hash() == base
    assert tiny_config(train={"eval_batch_size": 7}).config_hash() == base
    assert tiny_config(train={"milestones": [0.3]}).config_hash() == base  # cosine reads no milestones
    assert (
        tiny_config(train={"schedule": "multistep", "milestones": [0.3]}).config_hash()
        != tiny_config(train={"schedule": "multistep"}).config_hash()
    )
    assert tiny_config(train={"lr": 0.2}).config_hash() != base


def test_equal_networks_spelled_differently_share_a_key():
    a = build_config(tiny_tree(se={"enabled": False, "reduction": 8}))
    b = build_config(tiny_tree(se={"enabled": False, "excitation": "tanh"}))
    assert a.config_hash() == b.config_hash()
    assert build_config(tiny_tree(model={"shortcut": "A"})).config_hash() == tiny_config().config_hash()


def test_compile_accepts_booleans_and_modes():
    assert TrainSection(compile=True).compile == "default" and TrainSection(compile=False).compile == "off"
    assert TrainSection(compile="reduce-overhead").compile == "reduce-overhead"
    with pytest.raises(ValueError):
        TrainSection(compile="fast")


@pytest.mark.parametrize(
    ("field", "value"),
    [("workers", -1), ("image_size", 0), ("val_size", 0), ("train_subset", 0), ("val_subset", -3), ("test_subset", 0),
     ("synthetic_classes", 1), ("synthetic_size", 0), ("synthetic_channels", 0), ("synthetic_train", 1),
     ("synthetic_test", 0)],
)  # fmt: skip
def test_sizes_the_config_alone_can_refuse_are_refused_at_validation(field, value):
    """Item 16 (issue 19): these were checked only in the worker, after the sweep had written its ledger."""
    with pytest.raises(SenetError, match=rf"^data\.{field}: Input should be greater than or equal to"):
        build_config(tiny_tree(data={field: value}))
    with pytest.raises(SenetError, match=rf"^--set data\.{field}: Input should be greater than or equal to"):
        check_value(f"data.{field}", value, f"--set data.{field}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"dataset": "fashion_mnist", "val_size": 5000, "train_subset": 100_000},
            r"data\.train_subset: 100000 is not allowed; allowed: "
            r"1\.\.55000 or null for all \(the fashion_mnist training set has 60000 images, 5000 of them validate\)",
        ),
        ({"dataset": "cifar10", "val_size": 50_000}, r"data\.val_size: 50000 is not allowed; allowed: 1\.\.49999 "),
        (
            {"dataset": "cifar100", "val_size": 5000, "val_subset": 5001},
            r"data\.val_subset: 5001 is not allowed; allowed: 1\.\.5000 ",
        ),
        ({"dataset": "fashion_mnist", "test_subset": 10_001}, r"data\.test_subset: 10001 .* allowed: 1\.\.10000 "),
        ({"synthetic_train": 32}, r"data\.val_size: 32 is not allowed; allowed: 1\.\.31 "),
        ({"synthetic_test": 8, "test_subset": 9}, r"data\.test_subset: 9 is not allowed; allowed: 1\.\.8 "),
    ],
)
def test_sizes_a_known_dataset_cannot_hold_are_refused_from_the_config(data, message):
    with pytest.raises(SenetError, match=f"^{message}"):
        check_sizes(tiny_config(data=data).data)


def test_sizes_that_fit_and_image_folders_pass_the_config_check(tmp_path):
    check_sizes(tiny_config(data={"dataset": "fashion_mnist", "val_size": 5000, "train_subset": 55_000}).data)
    check_sizes(tiny_config(data={"dataset": "imagefolder", "root": str(tmp_path), "train_subset": 10**9}).data)
