"""Where this process stands in a trial that spans several devices (`train.devices`), and the few collective steps
the engine takes there. Alone (no process group), every function is the identity: rank 0 of a world of one.

A DDP group trains one trial: every rank takes its part of each batch (`shard`), DDP averages the gradients, so
the weights stay equal on every rank; rank 0 alone evaluates (its results broadcast, so a plateau schedule
drops on every rank at once), checkpoints and writes the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ablations.training.graphs import Tally

_NONE = 2**62  # "no bad step" in a MIN all-reduce


def active() -> bool:
    """Whether this process is a rank of a DDP group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def main() -> bool:
    """Rank 0: the one that evaluates, checkpoints and reports (alone: this process)."""
    return rank() == 0


def shard() -> tuple[int, int]:
    """(rank, world): the part of every batch this process trains on."""
    return rank(), world()


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU (`LOCAL_RANK` of the launcher), or the CPU."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` as one replica of the group (gradients all-reduced in backward), or `net` itself alone."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def summed(*values: float) -> list[float]:
    """Each value summed over the ranks (an epoch's loss sum, hits and images)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def agree(flag: bool) -> bool:
    """True on every rank when it is True on any (a pause asked of rank 0 stops them all at the same step)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def first_bad(tally: Tally) -> int | None:
    """The first step of the epoch whose loss was not finite on any rank (the same answer on every rank)."""
    bad = tally.first_bad()
    if not active():
        return bad
    t = torch.tensor([_NONE if bad is None else bad], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return None if int(t.item()) == _NONE else int(t.item())


def from_main(compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`compute()` on rank 0 (an evaluation), its result given to every rank; the others wait for it."""
    if not active():
        return compute()
    box = [compute() if main() else None]
    dist.broadcast_object_list(box, src=0, device=_device())
    assert box[0] is not None
    return box[0]
