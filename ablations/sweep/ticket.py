"""What one attempt trains: the ticket a sweep queues in the ledger and a worker claims (the runner <-> worker
contract of an attempt, beside the sweep's in `manifest`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Ticket:
    """What an attempt is for, written when it is queued (the runner <-> worker contract)."""

    key: str
    config: dict[str, Any]  # the resolved RunConfig, JSON
    config_hash: str
    seed: int
    label: str
    factors: dict[str, Any]
    studies: list[str]
    number: int = 1  # attempt number of this trial
    exclusive: bool = False  # run alone on its GPU (after an out-of-memory failure)
    data_files: str | None = None  # the digest of the packaged dataset's files its key holds (None: no such files)

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Ticket:
        return cls(**{f.name: attrs[f.name] for f in fields(cls) if f.name in attrs})
