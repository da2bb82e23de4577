"""A group over several nodes without a scheduler: the leader's `train_ddp` with `Nodes` (static rendezvous it
hosts, each launch published in the shared folder) and another process joining as node 1 (`follow_group`), on this
host with gloo. The two-node group trains the weights of the one-host group of the same world size; the folder's
protocol (numbered launches, `over`) and the split of a group's devices over nodes. The same over a real two-node
Slurm allocation is in tests/ablations/sweep/test_slurm_nodes.py (make slurm-test)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ablations.errors import SenetError
from ablations.training.checkpoint import load_checkpoint
from ablations.training.ddp import follow_group, train_ddp
from ablations.training.nodes import NODES_ENV, Nodes, devices_here
from ablations.training.steps import Progress
from tests._support.configs import tiny_config
from tests._support.processes import ROOT

_FOLLOW = """
import sys
from pathlib import Path
from ablations.training.ddp import follow_group
from ablations.training.nodes import Nodes
print("joined", follow_group(Nodes(Path(sys.argv[1]), 2), 1), flush=True)
"""


def _tree(world: int, batch: int = 32) -> dict:
    return (
        tiny_config(train={"devices": world, "epochs": 1, "device": "cpu", "batch_size": batch}).resolved().model_dump()
    )


def test_the_folder_numbers_each_launch_and_says_when_the_allocation_is_over(tmp_path, monkeypatch):
    nodes = Nodes(tmp_path / "groups" / "7.0", 2)
    assert nodes.groups() == [] and not nodes.is_over()
    assert [nodes.publish({"endpoint": f"h:{p}"}) for p in (1, 2)] == [1, 2]
    assert nodes.groups() == [1, 2] and nodes.read(2)["endpoint"] == "h:2"
    nodes.end()
    assert nodes.is_over()
    monkeypatch.setenv(NODES_ENV, nodes.to_env())
    assert Nodes.from_env() == nodes and devices_here(16) == 8
    monkeypatch.delenv(NODES_ENV)
    assert Nodes.from_env() is None and devices_here(16) == 16


def test_a_follower_leaves_at_once_when_the_allocation_is_over_before_any_group(tmp_path):
    nodes = Nodes(tmp_path / "groups", 2)
    nodes.end()
    assert follow_group(nodes, 1, log=lambda _: None) == 0


def test_a_group_that_does_not_split_over_the_nodes_is_refused(tmp_path):
    with pytest.raises(SenetError, match="does not split over the allocation's 2 nodes"):
        train_ddp(_tree(3, batch=48), 3, False, tmp_path, [], print, Progress(), Nodes(tmp_path / "groups", 2))


def test_two_nodes_of_one_rank_train_the_weights_of_one_host_of_two(tmp_path):
    """Node 0 here (the leader: static rendezvous on a free port, rank 0 checkpoints), node 1 another process that
    joins what the leader publishes; against `train_ddp` of two ranks on one host: every parameter equal."""
    nodes = Nodes(tmp_path / "groups", 2)
    follower = subprocess.Popen([sys.executable, "-c", _FOLLOW, str(nodes.folder)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    lines: list[str] = []
    try:
        spread = train_ddp(_tree(2), 2, False, tmp_path / "spread", [], lines.append, Progress(), nodes)
    finally:
        nodes.end()
        out, _ = follower.communicate(timeout=120)
    assert spread.status == "finished", out
    assert "joined 1" in out, out  # node 1 took part in the one group, then left
    assert any("2 ranks over 2 nodes (1 each)" in line for line in lines), lines
    local = train_ddp(_tree(2), 2, False, tmp_path / "local", [], lambda _: None, Progress())
    a, b = load_checkpoint(tmp_path / "spread" / "checkpoint.pt"), load_checkpoint(tmp_path / "local" / "checkpoint.pt")
    assert a["world"] == b["world"] == 2
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert spread.summary["final_val_top1_err"] == pytest.approx(local.summary["final_val_top1_err"])
