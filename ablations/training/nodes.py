"""A trial's DDP group across several nodes: one Slurm allocation of `count` tasks, one per node, each node running
`train.devices / count` ranks.

The first node's task is the group's leader: its sweep worker claims the trial, holds the lease and starts the
group as on one host (`ddp.train_ddp`), with torch's static rendezvous instead of a local one: its agent hosts the
rendezvous store, on a free port of its own host, and the global rank 0 trains there. Each launch of the group is
published in a folder every node sees (`group-<n>.json`: the endpoint, the ranks per node, the resolved
configuration and the run folder); the other nodes' tasks (`ddp.follow_group`) join each group as it is published
and leave once the leader writes `over` (the leader's task writes it whatever happened). A retry of a crashed
attempt inside the same allocation is the next group; a requeued job starts a fresh folder
(`<job>.<restart>`), so no node joins a group of an earlier run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODES_ENV = "SENET_ABLATE_NODES"  # on the leader node: {"folder": ..., "count": K} (its workers inherit it)
OVER = "over"


@dataclass(frozen=True)
class Nodes:
    """The nodes of one group allocation: `count` of them, meeting in the shared `folder`."""

    folder: Path
    count: int

    @classmethod
    def from_env(cls) -> Nodes | None:
        """The allocation this process's trial spans (None: one host, the usual case)."""
        text = os.environ.get(NODES_ENV)
        if not text:
            return None
        tree = json.loads(text)
        return cls(Path(tree["folder"]), int(tree["count"]))

    def to_env(self) -> str:
        return json.dumps({"folder": str(self.folder), "count": self.count})

    def groups(self) -> list[int]:
        """The numbers of the groups published so far, in order."""
        found = []
        for path in self.folder.glob("group-*.json"):
            number = path.stem.partition("-")[2]
            if number.isdigit():
                found.append(int(number))
        return sorted(found)

    def publish(self, info: dict[str, Any]) -> int:
        """Publish the next launch of the group (atomically: a node never reads half a file); returns its number."""
        self.folder.mkdir(parents=True, exist_ok=True)
        number = (self.groups() or [0])[-1] + 1
        tmp = self.folder / f".group-{number}.tmp"
        tmp.write_text(json.dumps({**info, "number": number}))
        tmp.replace(self.folder / f"group-{number}.json")
        return number

    def read(self, number: int) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.folder / f"group-{number}.json").read_text())
        return result

    def end(self) -> None:
        """The leader's task is done with the allocation: the other nodes leave."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / OVER).touch()

    def is_over(self) -> bool:
        return (self.folder / OVER).exists()


def devices_here(devices: int) -> int:
    """The ranks of a `devices`-rank group that this node runs (all of them on one host)."""
    nodes = Nodes.from_env()
    return devices // nodes.count if nodes is not None else devices
