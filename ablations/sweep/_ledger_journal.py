"""Reading a ledger of senet-ablate 0.2 (an Optuna journal file) once, as rows of the database ledger.

That ledger was one Optuna study (`senet-ablate-ledger`) with one Optuna trial per attempt; the trial's user
attributes held the ticket and the attempt's story, the study's held the liveness settings and `study:<name>`
notes. Attempt ids are kept (MLflow runs are tagged with them). What the journal's lack of constraints let
happen is made to fit the new ones, and said so in the attempt's reason: an attempt running at import can have no
holder any more (`lost`), a second result or a second queued attempt of one trial is ended, a repeated attempt
number is renumbered.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablations.errors import SenetError
from ablations.paths import check_key
from ablations.sweep.ticket import Ticket

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

LEDGER_STUDY = "senet-ablate-ledger"  # the one Optuna study that held every attempt


@dataclass
class Journal:
    """What a journal held: attempt rows (columns of `attempts`, ids kept), notes by study, liveness settings."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    liveness: dict[str, float] | None = None


def whole_records(path: Path) -> bytes:
    """The journal's bytes without a torn last record (a writer killed mid-append, a full disk); a damaged record
    before the end is not guessed at but reported."""
    data = path.read_bytes()
    end = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    while lines:
        try:
            json.loads(lines[-1])
            break
        except ValueError:
            end -= len(lines.pop()) + 1
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError:
            raise SenetError(f"--storage: {path}: record {number} is damaged; the journal cannot be imported") from None
    return data[:end]


def read_journal(path: Path, now: float) -> Journal:
    """The attempts, notes and liveness settings of the journal at `path` (read from a copy; `now` in seconds
    since 1970 dates the attempts this import ends).

    Raises:
        SenetError: a damaged record, or a ledger of senet-ablate 0.1 (one queue per study, older keys).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory(prefix="senet-journal-") as tmp:
        copy = Path(tmp) / "ledger.journal"
        copy.write_bytes(whole_records(path))
        return read_storage(JournalStorage(JournalFileBackend(str(copy))), str(path), now)


def read_storage(storage: BaseStorage, where: str, now: float) -> Journal:
    """`read_journal` of any Optuna storage (a 0.2 ledger on PostgreSQL was Optuna's RDB storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {s.study_name: s for s in storage.get_all_studies()}
    for name, summary in studies.items():
        if name != LEDGER_STUDY and any("key" in t.user_attrs for t in storage.get_all_trials(summary._study_id)):
            raise SenetError(
                f"--storage: {where} is a ledger of senet-ablate 0.1 (one queue per study; its trial keys predate "
                "identity version 2); give a new --results folder or --storage"
            )
    if LEDGER_STUDY not in studies:
        return Journal()
    sid = studies[LEDGER_STUDY]._study_id
    attrs = storage.get_study_user_attrs(sid)
    trials = sorted(storage.get_all_trials(sid, deepcopy=False), key=lambda t: t._trial_id)
    journal = Journal(
        notes={k.removeprefix("study:"): dict(v) for k, v in attrs.items() if k.startswith("study:")},
        liveness=attrs.get("liveness"),
    )
    numbers: dict[str, set[int]] = {}
    for t in trials:
        a = t.user_attrs
        if "key" not in a:
            continue
        ticket = Ticket.from_attrs(a)
        check_key(ticket.key)
        used = numbers.setdefault(ticket.key, set())
        number = ticket.number if ticket.number not in used else max(used) + 1
        used.add(number)
        start = t.datetime_start.timestamp() if t.datetime_start else None
        row = {
            "id": t._trial_id,
            "key": ticket.key,
            "number": number,
            "state": t.state.name if t.state.name in ("WAITING", "RUNNING", "COMPLETE") else "FAIL",
            "ticket": {**ticket.to_attrs(), "number": number},
            "token": None,
            "owner": a["owner"] if isinstance(a.get("owner"), dict) else None,
            "beat": int(a.get("beat", 0)),
            "epoch": int(a.get("epoch", 0)),
            "steps": 0,
            "run_id": a.get("run_id"),
            "outcome": a.get("outcome"),
            "kind": a.get("kind"),
            "reason": str(a.get("reason", ""))[:500],
            "memory": a.get("memory"),
            "result": None,
            "value": t.values[0] if t.values and math.isfinite(t.values[0]) else None,
            "queued_at": start or now,
            "claimed_at": start,
            "beat_at": start,
            "ended_at": t.datetime_complete.timestamp() if t.datetime_complete else None,
            "end_id": None,
        }
        journal.rows.append(row)
    _fit_constraints(journal.rows, now)
    return journal


def _fit_constraints(rows: list[dict[str, Any]], now: float) -> None:
    """End what the new constraints forbid: a running attempt (nobody holds it now), a second result of a trial,
    a queued attempt beside a result or beside another queued one."""
    done = {r["key"] for r in rows if r["state"] == "COMPLETE"}
    seen_done: set[str] = set()
    queued: set[str] = set()
    for r in rows:
        why = None
        if r["state"] == "RUNNING":
            why = "imported from the journal while running"
        elif r["state"] == "COMPLETE":
            if r["key"] in seen_done:
                why = "a second result of this trial in the journal (the first is kept)"
            seen_done.add(r["key"])
        elif r["state"] == "WAITING":
            if r["key"] in done:
                why = "queued in the journal although the trial has a result"
            elif r["key"] in queued:
                why = "queued twice in the journal"
            queued.add(r["key"])
        if why is not None:
            r.update(state="FAIL", kind="lost", reason=why, value=None, ended_at=r["ended_at"] or now)
