"""Trial identity: everything that changes a result, nothing that does not (issue "exactly once", item 12)."""

import pickle
import shutil

import numpy as np
import pytest

from ablations.config import (
    EARLIER_IDENTITIES,
    IDENTITY_VERSION,
    Host,
    RunConfig,
    TrainSection,
    build_config,
    check_sizes,
    unflatten,
)
from ablations.datafiles import DEBIAN_FASHION, MissingData
from ablations.errors import SenetError
from ablations.study.keys import check_value
from ablations.study.recipes import RECIPES
from tests._support.configs import tiny_config, tiny_tree
from tests._support.datasets import write_cifar, write_fashion


def test_keys_are_stable():
    """Keys recorded at identity version 4, and those of versions 3 and 2, which a trial still computes to find the
    results made under them. A change here orphans every result recorded before it: make it on purpose (bump
    IDENTITY_VERSION, keeping the old version in EARLIER_IDENTITIES) or not at all."""
    assert IDENTITY_VERSION == 4 and list(EARLIER_IDENTITIES) == [3, 2]
    tiny = tiny_config().resolved(Host("cpu"))
    assert [tiny.config_hash(version=v) for v in (4, 3, 2)] == ["0cebd84a7ca4", "cab687d388b5", "e5cdf0d099ef"]
    assert tiny.config_hash() == tiny.config_hash(version=4)
    table12 = build_config(unflatten({**RECIPES["cifar_fast"], "model.name": "resnet56", "data.dataset": "cifar10",
                                      "se.bias": False}))  # fmt: skip
    assert table12.resolved(Host("cuda")).config_hash(version=2) == "c91a069346fa"  # version 2 reads no files


def test_version_2_is_the_identity_as_it_was():
    """The earlier identity stays computable exactly: no data digest, the version it was made by."""
    cfg = build_config(tiny_tree(data={"dataset": "cifar10", "root": "/nowhere"})).resolved(Host("cpu"))
    assert cfg.identity(version=2) == {
        "version": 2,
        "model": {"shortcut": "A", "in_channels": 3, "num_classes": 10},
        "se": {"reduction": 4},
        "data": {"dataset": "cifar10", "val_size": 32, "synthetic_train": 160, "synthetic_test": 32,
                 "synthetic_size": 8, "synthetic_classes": 3},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "precision": "fp32", "channels_last": True,
                  "drop_last": False},
    }  # fmt: skip
    with pytest.raises(ValueError, match="identity version 1"):
        cfg.identity(version=1)


def test_version_3_differs_from_4_in_the_initialisation_only():
    """Version 4 (common random numbers) changed how a trial trains, not which fields make its identity."""
    cfg = tiny_config().resolved(Host("cpu"))
    assert cfg.identity(version=3) == cfg.identity(version=4) | {"version": 3}
    assert cfg.config_hash(version=3) != cfg.config_hash(version=4)


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist")
def test_debian_fashion_mnist_key_is_stable():
    """The shipped studies' data: its key holds the digest of Debian's four files."""
    cfg = tiny_config(data={"dataset": "fashion_mnist"}).resolved(Host("cpu"))
    assert cfg.identity()["data"]["files"] == (
        "sha256:f0616db38b9c48cb7686a79a32adc10500295453ef551cb1b34cc03d5010c93e"
    )
    assert [cfg.config_hash(version=v) for v in (4, 3, 2)] == ["d060647b293a", "d20d43bd6969", "8f3e85acbb53"]


def fashion_key(root, version=IDENTITY_VERSION):
    return tiny_config(data={"dataset": "fashion_mnist", "root": str(root)}).config_hash(version)


def test_a_relabelled_fashion_mnist_is_another_trial_and_a_copy_is_the_same(tmp_path):
    """Item 7 (issue 19): a relabelled copy of Fashion-MNIST under another data.root got the original's results."""
    arrays = write_fashion(tmp_path / "original")
    relabelled = {**arrays, "train-labels-idx1-ubyte": (arrays["train-labels-idx1-ubyte"] + 1) % 10}
    write_fashion(tmp_path / "relabelled", arrays=relabelled)
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    assert fashion_key(tmp_path / "original") != fashion_key(tmp_path / "relabelled")
    assert fashion_key(tmp_path / "original") == fashion_key(tmp_path / "copy")  # the data, not the path
    assert fashion_key(tmp_path / "original", 2) == fashion_key(tmp_path / "relabelled", 2)  # what version 2 did


@pytest.mark.parametrize("classes", [10, 100])
def test_a_relabelled_cifar_is_another_trial_and_a_copy_is_the_same(tmp_path, classes):
    write_cifar(tmp_path / "original", classes)
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    shutil.copytree(tmp_path / "original", tmp_path / "relabelled")
    folder = tmp_path / "relabelled" / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    name, key = ("test_batch", "labels") if classes == 10 else ("test", "fine_labels")
    batch = pickle.loads((folder / name).read_bytes())
    batch[key] = list(np.roll(batch[key], 1))
    (folder / name).write_bytes(pickle.dumps(batch))

    def digest(root):
        return tiny_config(data={"dataset": f"cifar{classes}", "root": str(root)}).config_hash()

    assert digest(tmp_path / "original") != digest(tmp_path / "relabelled")
    assert digest(tmp_path / "original") == digest(tmp_path / "copy")


def test_a_missing_packaged_dataset_has_no_key(tmp_path):
    """The key needs the files: a config whose data is missing is refused with the readers' one line."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingData, match="^data.root: Fashion-MNIST not found in .*apt-get install") as err:
        fashion_key(tmp_path / "empty")
    assert "\n" not in str(err.value) and str(tmp_path / "empty") in str(err.value)
    with pytest.raises(MissingData, match=r"^data.root: cifar10 not found at .*cifar-10-batches-py"):
        tiny_config(data={"dataset": "cifar10", "root": str(tmp_path / "empty")}).config_hash()
    assert fashion_key(tmp_path / "empty", 2)  # version 2 reads no files


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


def test_a_per_stage_reduction_hashes_as_the_network_it_builds():
    """Identical networks hash equal: one r on every stage is that r; an off stage drops its r from the identity;
    any other per-stage r is another trial."""
    key = lambda r, **se: tiny_config(se={"reduction": r, **se}).config_hash()  # noqa: E731
    assert key({2: 4, 3: 4, 4: 4}) == key(4) == tiny_config().config_hash()
    assert key({2: 8, 3: "off"}) == key({2: 8, 3: None, 4: False}) == key(8, stages=[2])
    assert key({2: 8, 3: "off", 4: 16}) == key({2: 8, 3: 4, 4: 16}, stages=[2, 4])
    assert len({key(4), key({2: 4, 3: 8, 4: 16}), key({2: 8, 3: 4, 4: 16}), key({2: 8, 4: 16})}) == 4
    assert key({2: "off", 3: "off", 4: "off"}) == key(4, enabled=False)  # no stage is no SE at all
    cfg = tiny_config(se={"reduction": {"2": 8, "3": "off", "4": 16}})  # JSON's string keys, as MLflow gives back
    assert cfg.se.reduction == {2: 8, 3: None, 4: 16} and cfg.identity()["se"] == {"reduction": {"2": 8, "4": 16}}
    assert cfg.flat()["se.reduction"] == {2: 8, 3: None, 4: 16}  # one param, not se.reduction.2 ...
    assert RunConfig.model_validate(unflatten(cfg.flat())) == cfg


def test_a_bad_per_stage_reduction_is_one_line_naming_it():
    with pytest.raises(SenetError) as err:
        build_config(tiny_tree(se={"reduction": {2: 0}}))
    assert str(err.value) == "se.reduction: stage 2: 0 is not allowed; allowed: an integer >= 1 or off"
    with pytest.raises(SenetError, match=r"^se.reduction: stage 5 does not exist in resnet20; allowed: 2, 3, 4$"):
        build_config(tiny_tree(se={"reduction": {5: 8}}))


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
