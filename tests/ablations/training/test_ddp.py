"""One trial across several devices (`train.devices`): the data split over ranks, a gloo group on the CPU that
trains the weights of the same trial's gradient-accumulated single-process run, and what the field refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ablations.config import build_config
from ablations.data.loaders import DeviceLoader, FolderLoader
from ablations.errors import SenetError
from ablations.training.checkpoint import load_checkpoint
from ablations.training.ddp import train_trial
from ablations.training.engine import _setup
from tests._support.configs import tiny_config, tiny_tree


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 1×1 uint8 images whose pixel is their index (mod 256) and whose label is their index."""
    return (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1), torch.arange(n)


class _Indexed(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1, 1, 1), index


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("kind", ["device", "folder"])
def test_the_ranks_split_every_single_device_batch_into_disjoint_parts_that_rebuild_it(kind, world):
    """The split keeps our seeded order: rank r's batch i is the r-th contiguous part of the single-device batch i,
    so the ranks' batches are disjoint and together exactly the single-device epoch (its short last batch dropped),
    in every epoch and from a mid-epoch resume."""
    n, batch = 203, 24

    def loader(shard: tuple[int, int]):
        if kind == "device":
            x, y = _images(n)
            return DeviceLoader(x, y, batch, train=True, mean=[0.0], std=[1.0], seed=5, drop_last=True, shard=shard)
        return FolderLoader(_Indexed(n), batch, train=True, device=torch.device("cpu"), seed=5, workers=0,
                            drop_last=True, shard=shard)  # fmt: skip

    def labels(ld, epoch: int, start: int = 0) -> list[list[int]]:
        ld.set_epoch(epoch, start)
        return [y.tolist() for _, y in ld]

    single = loader((0, 1))
    ranks = [loader((r, world)) for r in range(world)]
    for epoch in (0, 3):
        whole = labels(single, epoch)
        parts = [labels(ld, epoch) for ld in ranks]
        assert all(len(p) == len(whole) == n // batch for p in parts)
        for i, b in enumerate(whole):
            pieces = [p[i] for p in parts]
            assert all(len(piece) == batch // world for piece in pieces)
            assert sum(pieces, []) == b  # contiguous parts, in rank order
        seen = [label for p in parts for b in p for label in b]
        assert len(seen) == len(set(seen)) == n // batch * batch  # disjoint; complete but the dropped short batch
    assert [labels(ld, 3, 2) for ld in ranks] == [labels(ld, 3)[2:] for ld in ranks]  # a resume at batch 2


def test_a_shard_that_does_not_split_batches_evenly_is_refused():
    x, y = _images(64)
    with pytest.raises(ValueError, match="does not split"):
        DeviceLoader(x, y, 30, train=True, mean=[0.0], std=[1.0], drop_last=True, shard=(0, 4))
    with pytest.raises(ValueError, match="does not split"):
        DeviceLoader(x, y, 32, train=True, mean=[0.0], std=[1.0], drop_last=False, shard=(1, 2))


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"devices": 3, "batch_size": 32}, "train.batch_size: 32 does not split over train.devices = 3; allowed: a "
                                           "multiple of 3"),
        ({"devices": 2, "compile": "graphs", "device": "cuda"}, "train.compile: 'graphs' is not allowed with "
                                                                "train.devices = 2"),
        ({"devices": 2, "drop_last": False}, "train.drop_last: false is not allowed with train.devices = 2"),
        ({"devices": 0}, "train.devices: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_train_devices_refuses_what_a_group_cannot_split_in_one_line(train, message):
    with pytest.raises(SenetError) as err:
        build_config(tiny_tree(train=train))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_world_size_is_part_of_the_trial_key_and_one_device_keeps_every_earlier_key():
    """BN normalises each device's part of the batch, so 2 devices train another network than 1: another trial.
    `devices: 1` is the default and leaves the key as it was before the field existed."""
    one, two = tiny_config(), tiny_config(train={"devices": 2})
    assert tiny_config(train={"devices": 1}).config_hash() == one.config_hash()
    assert "devices" not in one.identity()["train"]
    assert two.config_hash() != one.config_hash() and two.identity()["train"]["devices"] == 2
    assert two.resolved().train.drop_last is True  # every rank's part of every batch the same size


def _accumulated(cfg, world: int) -> dict[str, torch.Tensor]:
    """The reference: the same trial in one process, each batch split in `world` contiguous parts whose losses
    (each divided by `world`) are backpropagated one after another before the optimizer's step."""
    run = _setup(cfg, None)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    run.model.train()
    for epoch in range(cfg.train.epochs):
        run.data.train.set_epoch(epoch)
        for x, y in run.data.train:
            run.optimizer.zero_grad(set_to_none=True)
            for xs, ys in zip(x.chunk(world), y.chunk(world), strict=True):
                (criterion(run.model(xs), ys) / world).backward()
            run.optimizer.step()
            run.scheduler.step()
    return {k: v.detach().clone() for k, v in run.model.named_parameters()}


@pytest.mark.parametrize(("world", "epochs"), [(2, 2), (4, 1)])
def test_a_ddp_trial_trains_the_weights_of_its_gradient_accumulated_single_process_run(tmp_path, world, epochs):
    """A gloo group of `world` CPU processes (torch's elastic launcher) against the reference above: epochs of 4
    steps of SGD with momentum and weight decay; every parameter equal to float tolerance. Four ranks sum their
    gradients in another order than the reference, a rounding that 8 steps at lr 0.1 on parts of 8 images grow
    to 1e-3 (two ranks add in one order: equal), so they are compared after 4. (BN's running statistics differ by
    design: DDP keeps rank 0's, the reference every part's in turn.)"""
    cfg = tiny_config(train={"devices": world, "epochs": epochs, "device": "cpu"}).resolved()
    result = train_trial(cfg, tmp_path, log=lambda _: None)
    assert result.status == "finished" and result.summary["epochs"] == epochs
    trained = load_checkpoint(tmp_path / "checkpoint.pt")
    assert trained["world"] == world
    single = cfg.model_copy(update={"train": cfg.train.model_copy(update={"devices": 1})})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank has on these 2 cores: the same kernels, the same rounding
    try:
        reference = _accumulated(single, world)
    finally:
        torch.set_num_threads(threads)
    for name, value in reference.items():
        torch.testing.assert_close(trained["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    first = result.history[0]
    assert first["train_loss"] > 0 and 0 <= first["train_top1_err"] <= 100  # over every rank's images
