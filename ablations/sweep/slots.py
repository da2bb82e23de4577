"""Slots: where warm workers run (a CPU share or a GPU), how they share a GPU, and where their files lie.

Each slot is one long-lived worker process. On a GPU host every slot is pinned to one device; several slots
may share a device (`--trials-per-gpu`), holding it shared, while a trial retried after running out of memory
holds it exclusively. Under `--trials-per-gpu auto` the slots are packed: how many share a GPU is
`ablations.sweep.packing`'s decision, from what their workers measure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ablations.errors import SenetError
from ablations.paths import STORAGE_ENV, TRACKING_ENV, cache_dir, workers_dir
from ablations.sweep.ledger import host_id, pid_alive, process_start

# A CUDA device as CUDA_VISIBLE_DEVICES takes it: an index, a GPU UUID or a MIG instance.
WAITING = "waiting.txt"  # in a trial's folder while it waits for its devices (`hold_group`)
_GPU_ID = re.compile(r"\d+|GPU-[0-9A-Fa-f-]{8,}|MIG-[0-9A-Za-z/-]{8,}")


@dataclass(frozen=True)
class Slot:
    """One worker's place: its index, its GPU (None on the CPU) and whether it is packed (`--trials-per-gpu auto`:
    it probes each configuration before training it and reports its epochs' images/s); `host`: every GPU of its
    sweep on this host, of which a trial of `train.devices` > 1 takes some (`hold_group`)."""

    index: int
    gpu: str | None = None
    packed: bool = False
    host: tuple[str, ...] = ()


def parse_gpus(text: str, visible: str | None = None) -> list[str]:
    """`--gpus`: `0,1` / `GPU-<uuid>,...` / `MIG-<uuid>,...` → the ids each worker's CUDA_VISIBLE_DEVICES gets.

    Under an inherited CUDA_VISIBLE_DEVICES (`visible`: a scheduler's allocation) the indices count its devices:
    index i is its i-th entry, which may be a UUID or a MIG id, and an id must be one of its entries, so a worker
    never leaves the allocation. Anything else is a SenetError naming what is allowed.
    """
    ids = [g.strip() for g in text.split(",") if g.strip()]
    for g in ids:
        if not _GPU_ID.fullmatch(g):
            raise SenetError(f"--gpus: {g!r} is not allowed; allowed: device indices, GPU-<uuid> or MIG-<uuid> ids")
    if visible is not None:
        ids = [_visible_device(g, visible) for g in ids]
    if len(set(ids)) != len(ids):
        raise SenetError(f"--gpus: {text!r} names a device twice")
    return ids


def _visible_device(gpu: str, visible: str) -> str:
    """`gpu` within an inherited CUDA_VISIBLE_DEVICES, whose entries CUDA reads up to the first that names no
    device (`-1` hides them all)."""
    entries: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not _GPU_ID.fullmatch(entry):
            break
        entries.append(entry)
    if gpu.isdigit() and int(gpu) < len(entries):
        return entries[int(gpu)]
    if not gpu.isdigit() and gpu in entries:
        return gpu
    leaves = f"leaves {', '.join(entries)} visible" if entries else "hides every device"
    allowed = f"indices 0..{len(entries) - 1} (of those) or those ids" if entries else "none"
    raise SenetError(f"--gpus: {gpu} is not allowed; CUDA_VISIBLE_DEVICES={visible!r} from the environment {leaves}; "
                     f"allowed: {allowed}")  # fmt: skip


def parse_per_gpu(text: str) -> int | None:
    """`--trials-per-gpu`: 1..64 workers per GPU, or `auto` (None: measure, then pack)."""
    text = text.strip()
    if text == "auto":
        return None
    if not text.isdigit():
        raise SenetError(f"--trials-per-gpu: {text!r} is not allowed; allowed: 1..64 or auto")
    if not 1 <= int(text) <= 64:
        raise SenetError(f"--trials-per-gpu: {int(text)} is not allowed; allowed: an integer in 1..64, or auto")
    return int(text)


def host_cores() -> int:
    """The cores this process may run on (a scheduler's or taskset's allocation, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(slots: int) -> int:
    """Threads per slot: the cores shared out, at least one (oversubscribed OpenMP threads stall each other)."""
    return max(1, host_cores() // max(1, slots))


def worker_env(base: dict[str, str], slot: Slot, threads: int, results: Path) -> dict[str, str]:
    """The environment of a slot's worker: its GPU, its thread budget and the compile caches it shares."""
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["SENET_ABLATE_THREADS"] = env["OMP_NUM_THREADS"]
    env["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir(results) / "inductor")
    env["TRITON_CACHE_DIR"] = str(cache_dir(results) / "triton")
    if slot.gpu is not None:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # indices as nvidia-smi prints them, unless inherited
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu  # `parse_gpus` resolved it within an inherited list
    return env


class GpuPermit:
    """Shared or exclusive use of one GPU by the slot workers pinned to it, across processes.

    Both are one `flock` call on one file, so an exclusive taker gets the whole device at once or waits (never
    half of several permits); before it waits it closes a gate that new shared takers pass, so a stream of small
    trials cannot starve it. The kernel frees both locks when a holder dies. The files are named by host and
    device: on a results folder that hosts share, GPU 0 of one host is not GPU 0 of another.
    """

    def __init__(self, results: Path, gpu: str) -> None:
        folder = results / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"gpu-{file_part(host_id())}.{file_part(gpu)}"  # "." never occurs in either part
        self.main = folder / f"{name}.lock"
        self.gate = folder / f"{name}.gate"

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        gate = os.open(self.gate, os.O_RDWR | os.O_CREAT, 0o644)
        main = os.open(self.main, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if exclusive:
                fcntl.flock(gate, fcntl.LOCK_EX)
                fcntl.flock(main, fcntl.LOCK_EX)
            else:
                fcntl.flock(gate, fcntl.LOCK_SH)  # passes unless an exclusive taker is waiting or running
                fcntl.flock(gate, fcntl.LOCK_UN)
                fcntl.flock(main, fcntl.LOCK_SH)
            yield
        finally:
            os.close(main)  # closing drops the locks
            os.close(gate)


@contextlib.contextmanager
def hold_group(
    results: Path, slot: Slot, devices: int, folder: Path, log: Callable[[str], None], of: int | None = None
) -> Iterator[list[str]]:
    """The GPUs of a trial of `devices` > 1, each held exclusively: the slot's own and the host's next ones (`of`:
    the whole group's devices, when this host runs `devices` of a group over several nodes).

    Every taker asks for its permits in one order (sorted ids), so two group trials never each hold a part of the
    other's devices; small trials finish theirs and wait at the gates meanwhile (no deadlock, no starvation). The
    ranks see the held GPUs (CUDA_VISIBLE_DEVICES while the permits are held). While it waits, the trial's `folder`
    holds WAITING, the line `status` shows beside it.

    Raises:
        SenetError: the host's sweep has fewer GPUs than the trial asks.
    """
    assert slot.gpu is not None
    host = slot.host or (slot.gpu,)
    if len(host) < devices:
        raise SenetError(f"train.devices: {devices} is not allowed on this host, whose sweep has {len(host)} GPU(s) "
                         f"({','.join(host)}); allowed: 1..{len(host)}, or more GPUs with --gpus")  # fmt: skip
    chosen = sorted([slot.gpu, *[g for g in host if g != slot.gpu][: devices - 1]])
    line = f"waiting for GPUs {','.join(chosen)}, each alone: a trial of {of or devices} devices"
    if of is not None and of != devices:
        line += f" ({devices} on this node)"
    log(line)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with contextlib.ExitStack() as held:
        held.callback(lambda: (folder / WAITING).unlink(missing_ok=True))
        (folder / WAITING).write_text(f"{line} (others train on them now)\n")
        for gpu in chosen:
            held.enter_context(GpuPermit(results, gpu).hold(exclusive=True))
        (folder / WAITING).unlink(missing_ok=True)
        log(f"holding GPUs {','.join(chosen)}")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        try:
            yield chosen
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


@dataclass(frozen=True)
class WorkerRecord:
    """A live worker as its pid file describes it."""

    pid: int
    start: int | None
    slot: int
    gpu: str | None
    path: Path

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start)


def file_part(text: str) -> str:
    """`text` as part of a file name (a host id holds slashes, a MIG id too)."""
    return re.sub(r"[^0-9A-Za-z-]", "_", text)


def worker_folder(results: Path, manifest_id: str) -> Path:
    """Where one sweep's workers keep their pid files, logs, probes and rates."""
    return workers_dir(results) / manifest_id


def register(results: Path, manifest_id: str, slot: Slot) -> Path:
    """The calling worker's pid file: how a rerun of its sweep on this host finds and adopts it."""
    folder = worker_folder(results, manifest_id)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = folder / f"{file_part(host_id())}-{pid}.json"
    path.write_text(json.dumps({"pid": pid, "start": process_start(pid), "slot": slot.index, "gpu": slot.gpu}))
    return path


def live_workers(results: Path, manifest_id: str) -> list[WorkerRecord]:
    """The workers of one sweep on this host that are still alive; the files of dead ones are removed."""
    folder = worker_folder(results, manifest_id)
    prefix = file_part(host_id()) + "-"
    out = []
    for path in sorted(folder.glob(f"{prefix}*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            record = WorkerRecord(int(data["pid"]), data.get("start"), int(data["slot"]), data.get("gpu"), path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.alive():
            out.append(record)
        else:
            path.unlink(missing_ok=True)
    return out


def log_path(results: Path, manifest_id: str, slot: Slot) -> Path:
    return worker_folder(results, manifest_id) / f"slot{slot.index}.log"


def spawn_worker(
    results: Path,
    manifest: Path,
    manifest_id: str,
    slot: Slot,
    threads: int,
    stores: tuple[str, str],
    after: str | None,
) -> subprocess.Popen[bytes]:
    """Start the worker of `slot`, writing to its own log file (it outlives us; a pipe would not).

    Args:
        stores: the ledger URL and the tracking URI, passed by environment (a password must never show in `ps`).
        after: the manifest is not written yet: the worker waits, while this process lives, for a manifest other than
            the one that is there now (`Manifest.state`: an earlier sweep of the same trials left it, or none).
    """
    env = worker_env(dict(os.environ), slot, threads, results)
    env[STORAGE_ENV], env[TRACKING_ENV] = stores
    cmd = [sys.executable, "-m", "ablations.sweep.worker", "--manifest", str(manifest), "--results", str(results),
           "--slot", str(slot.index)]  # fmt: skip
    if slot.gpu is not None:
        cmd += ["--gpu", slot.gpu, *(["--packed"] if slot.packed else [])]
    if slot.host:
        cmd += ["--host-gpus", ",".join(slot.host)]
    if after is not None:
        cmd += ["--wait-for", str(os.getpid()), "--after", after]
    log = log_path(results, manifest_id, slot)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


MAX_SLOTS = 1000  # slot numbers per GPU under --trials-per-gpu auto (GPU i has slots i*1000 ...)


def spread(slots: list[Slot]) -> list[Slot]:
    """Slots in the order their workers start: across the GPUs first (each GPU's first slot, then each second
    one ...), so fewer workers than slots still use every device."""
    rank: dict[str | None, int] = {}
    ranked = []
    for slot in slots:
        rank[slot.gpu] = rank.get(slot.gpu, 0) + 1
        ranked.append((rank[slot.gpu], slot))
    return [slot for _, slot in sorted(ranked, key=lambda r: r[0])]
