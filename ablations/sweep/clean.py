"""The disk a study's trial folders (`results/runs/<key>/`) take, and `senet-ablate clean`: the files its finished
trials no longer need go, the weights that `knockout --run` and `excitation` read stay."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.outcomes import Standing
from ablations.paths import CHECKPOINT, RESULT, run_dir
from ablations.sweep.ledger import CONNECT_S, Ledger, State
from ablations.sweep.status import TrialStatus

# What readers of a finished trial take from its checkpoint: `knockout --run` (evaluate.finished_run) and
# `excitation` (excitation.load_model) load `model`; `load_checkpoint` wants `model` and `epoch`; the identity and the
# history (a few numbers an epoch) say what the weights are. The rest (optimizer, scheduler and RNG states, a
# mid-epoch position) only resumes training, which a trial with a result never does again.
WEIGHTS = ("model", "epoch", "history", "config_hash", "seed", "world")
KEPT = (f"kept: each finished trial's weights in its {CHECKPOINT}, which `knockout --run` and `excitation` read "
        f"(--all removes them too), its {RESULT} and train.log")  # fmt: skip
KEPT_ALL = (f"kept: each finished trial's {RESULT} and train.log; its {CHECKPOINT} is removed (--all): "
            "`knockout --run` and `excitation` can no longer read it")  # fmt: skip
UNTOUCHED = (
    "not touched: the folders of trials without a result (a failed trial resumes from its checkpoint after `retry`)"
)


def megabytes(n: float) -> str:
    """Bytes as people read them: 1.5 MiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _files(folder: Path) -> Iterable[os.DirEntry[str]]:
    """The plain files under `folder` (symbolic links neither followed nor counted)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _files(Path(e.path))
        elif e.is_file(follow_symlinks=False):
            yield e


def _is_checkpoint(name: str) -> bool:
    """The checkpoint, one set aside as unloadable, or the temp file of a write a kill interrupted."""
    return name == CHECKPOINT or name.startswith(f"{CHECKPOINT}.unloadable-") or name.startswith(f".{CHECKPOINT}.")


@dataclass(frozen=True)
class DiskUse:
    """What a study's trial folders hold on disk, in bytes."""

    folders: int  # trial folders that exist
    total: int
    checkpoints: int  # of which checkpoint files
    finished: int  # of which checkpoint files of finished trials (what `clean` looks at)


def disk_use(results: Path, standing: Iterable[tuple[str, Standing]]) -> DiskUse:
    """The disk the folders of trials (key, where it stands) take under `results/runs/`."""
    folders = total = checkpoints = finished = 0
    for key, state in standing:
        folder = run_dir(results, key)
        if not folder.is_dir():
            continue
        folders += 1
        for e in _files(folder):
            size = e.stat(follow_symlinks=False).st_size
            total += size
            if _is_checkpoint(e.name):
                checkpoints += size
                finished += size if state == Standing.DONE else 0
    return DiskUse(folders, total, checkpoints, finished)


def disk_line(study: str, results: Path, found: list[TrialStatus]) -> str | None:
    """`status`'s line on disk use, or None when the study has no trial folder yet."""
    use = disk_use(results, ((s.trial.key, s.state) for s in found))
    if not use.folders:
        return None
    hint = f"; `senet-ablate clean {study} --dry-run` lists what finished trials no longer need" if use.finished else ""
    return (f"disk: {megabytes(use.total)} in {use.folders} trial folders under {results / 'runs'} (checkpoints "
            f"{megabytes(use.checkpoints)}, of finished trials {megabytes(use.finished)}){hint}")  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One thing `clean` frees: a file it removes, or a checkpoint it cuts down to the weights (`slim`)."""

    status: TrialStatus
    path: Path
    size: int  # bytes freed (a slimmed checkpoint: about the size of the states it drops)
    what: str
    slim: bool = False


@dataclass
class Plan:
    """What `clean` frees for a study, and what it leaves."""

    study: str
    results: Path
    everything: bool  # --all: the finished trials' checkpoints go as a whole
    items: list[Item] = field(default_factory=list)
    finished: int = 0  # finished trials with a folder
    untouched: Counter[Standing] = field(default_factory=Counter)  # trials not finished that have a folder


def _resume_state(path: Path) -> tuple[list[str], int]:
    """The entries of a checkpoint beyond its weights, and about how many bytes their tensors take (read with
    `mmap`: only the file's index is read)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    extra = sorted(k for k in state if k not in WEIGHTS) if isinstance(state, dict) else []
    return extra, sum(_tensor_bytes(state[k]) for k in extra)


def _tensor_bytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _trial_items(s: TrialStatus, folder: Path, everything: bool) -> list[Item]:
    from ablations.training.checkpoint import CheckpointError

    items = []
    for e in sorted(_files(folder), key=lambda e: e.name):
        size = e.stat(follow_symlinks=False).st_size
        if e.name == CHECKPOINT and everything:
            items.append(Item(s, Path(e.path), size, "the final checkpoint (its weights)"))
        elif e.name == CHECKPOINT:
            try:
                extra, dropped = _resume_state(Path(e.path))
            except Exception as err:  # noqa: BLE001 — an unreadable checkpoint is left for its owner to look at
                raise CheckpointError(f"clean: {e.path}: checkpoint is unreadable ({type(err).__name__}); nothing "
                                      "was removed") from None  # fmt: skip
            if extra:
                items.append(Item(s, Path(e.path), dropped, f"its resume state ({', '.join(extra)})", slim=True))
        elif e.name.startswith(f"{CHECKPOINT}.unloadable-"):
            items.append(Item(s, Path(e.path), size, "a checkpoint set aside as unloadable when the trial restarted"))
        elif e.name.startswith(f".{CHECKPOINT}.") or e.name == f".{RESULT}.tmp":
            items.append(Item(s, Path(e.path), size, "the temp file of a write a kill interrupted"))
    return items


def plan_clean(study: str, results: Path, found: list[TrialStatus], everything: bool = False) -> Plan:
    """What `clean` would free: in the folder of each finished trial its checkpoint's resume state (with
    `everything`, the checkpoint as a whole), checkpoints set aside as unloadable and interrupted temp files.

    Raises:
        CheckpointError: a finished trial's checkpoint cannot be read (nothing is removed).
    """
    plan = Plan(study, results, everything)
    for s in found:
        folder = run_dir(results, s.trial.key)
        if not folder.is_dir():
            continue
        if s.state != Standing.DONE:
            plan.untouched[s.state] += 1
            continue
        plan.finished += 1
        plan.items += _trial_items(s, folder, everything)
    return plan


def apply(plan: Plan, storage_url: str) -> int:
    """Free what `plan` lists, trial by trial, each only while the ledger still holds its result and no live
    attempt (queued, or leased to a worker); returns the bytes freed. A checkpoint is cut down atomically: a reader
    sees the old file or the new one."""
    from ablations.training.checkpoint import load_checkpoint, save_checkpoint

    attempts = Ledger.open(storage_url, patience=CONNECT_S).attempts()
    done = {a.key for a in attempts if a.state == State.COMPLETE}
    live = {a.key for a in attempts if a.state in (State.RUNNING, State.WAITING)}
    freed = 0
    for item in plan.items:
        key = item.status.trial.key
        if key not in done or key in live:
            continue
        before = item.path.stat().st_size
        if item.slim:
            state = load_checkpoint(item.path)
            save_checkpoint({k: state[k] for k in WEIGHTS if k in state}, item.path)
            freed += before - item.path.stat().st_size
        else:
            item.path.unlink()
            freed += before
    return freed


def render(plan: Plan, freed: int | None) -> str:
    """What `clean` prints: each file freed, what it kept and why, and the bytes freed (`freed` None: a dry run)."""
    verb = "would free" if freed is None else "freed"
    lines = [f"clean {plan.study}: {plan.finished} finished trials with a folder under {plan.results / 'runs'}"]
    for item in plan.items:
        t = item.status.trial
        size = f"about {megabytes(item.size)}" if item.slim else megabytes(item.size)
        action = f"cut {item.path.name} down to its weights, dropping {item.what}" if item.slim else \
            f"remove {item.path.name}, {item.what}"  # fmt: skip
        lines.append(f"  {t.label} seed {t.seed} [{t.key}]: {action}: {size}")
    if not plan.items:
        lines.append("  nothing to free")
    lines.append(KEPT_ALL if plan.everything else KEPT)
    untouched = ", ".join(f"{n} {state}" for state, n in sorted(plan.untouched.items()))
    lines.append(UNTOUCHED + (f": {untouched}" if untouched else ""))
    total = sum(i.size for i in plan.items) if freed is None else freed
    lines.append(f"{verb} {megabytes(total)}" + (" (dry run: nothing was changed)" if freed is None else ""))
    return "\n".join(lines)
