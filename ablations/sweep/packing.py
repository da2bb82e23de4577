"""Packing under `--trials-per-gpu auto`: how many workers share each GPU, decided from what they measure.

The least of four limits wins, at least one worker and at most `MAX_PER_GPU`: the GPU's memory over one trial's need
(its CUDA context plus its peak reserved memory, from a probe its worker runs before training it), the GPU's share
of the host's cores (an eager trial keeps one busy launching kernels), its share of the trials left, and throughput.
Without MPS, processes time-share a GPU: packing speeds small eager trials up to a few processes and slows them
beyond, so workers are added one at a time and one stays only if it raised its GPU's images/s by `RISE`. The
workers write what the controller reads here, beside their pid files: a probe per GPU and configuration, and each
worker's last epoch.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ablations.sweep.ledger import Attempt, host_id
from ablations.sweep.slots import WorkerRecord, file_part, worker_folder

HEADROOM = 0.15  # share of a GPU's memory kept free when packing trials onto it
MAX_PER_GPU = 32  # workers on one GPU at most
RISE = 0.05  # the rise of its GPU's images/s, as a share of the count before, an added worker must bring to stay
RETIRE = signal.SIGUSR1  # the controller's word to a packed worker: leave after this trial


@dataclass(frozen=True)
class Fit:
    """What bounds one GPU's workers before any of them trained: its memory, one trial's need, the host's cores."""

    total_mb: float = 0.0  # the GPU's memory (0: not probed yet)
    need_mb: float = 0.0  # one trial's: its CUDA context plus its peak reserved memory (0: not measured yet)
    cores: int = 1  # the host's
    gpus: int = 1  # the GPUs sharing them

    def most(self, unmeasured: int = 1, headroom: float = HEADROOM, cap: int = MAX_PER_GPU) -> int:
        """Workers the memory (`headroom` of it kept free), the GPU's share of the cores and `cap` allow: one for a
        trial too big to share (it may run out of memory alone), and `unmeasured` while its need is not measured
        (one: no worker is added before a probe)."""
        memory = int(self.total_mb * (1 - headroom) // self.need_mb) if self.need_mb > 0 else unmeasured
        return max(1, min(cap, memory, self.cores // self.gpus))


def earned(rates: dict[int, float], rise: float = RISE) -> int:
    """Workers throughput earned on one GPU, from its aggregate images/s at each worker count measured: while each
    count beat the one before it by `rise`, one more than the largest (one before any was measured); else the count
    before the first that did not."""
    counts = sorted(rates)
    for fewer, more in zip(counts, counts[1:], strict=False):
        if rates[more] < rates[fewer] * (1 + rise):
            return fewer
    return counts[-1] + 1 if counts else 1


def per_gpu(fit: Fit, trials_left: int, rates: dict[int, float], rise: float = RISE) -> int:
    """Workers one GPU should have: the least of what its memory, its share of the cores and the cap allow
    (`Fit.most`), its share of the trials left (rounded up) and what throughput earned (`earned`); at least one."""
    return max(1, min(fit.most(), -(-trials_left // fit.gpus), earned(rates, rise)))


def surplus(live: int, fit: Fit, rates: dict[int, float], rise: float = RISE) -> int:
    """How many of a GPU's `live` workers leave after their trial: those beyond what its measured memory, its cores
    and the cap allow and, once `live` workers were measured side by side, those throughput did not earn. Never for
    want of a measurement or of trials: workers with nothing left end by themselves."""
    keep = fit.most(unmeasured=MAX_PER_GPU)
    if live in rates:
        keep = min(keep, earned(rates, rise))
    return max(0, live - keep)


# -- what the workers write -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One configuration measured on one GPU by the worker about to train it there (MB)."""

    gpu: str
    config_hash: str
    context_mb: float  # the CUDA context: what a worker holds outside the caching allocator
    peak_mb: float  # peak reserved memory over a few training steps and an evaluation batch
    total_mb: float  # the GPU's memory


@dataclass(frozen=True)
class Rate:
    """A packed worker's last epoch as it reported it (wall-clock seconds)."""

    pid: int
    start: int | None  # the process's start (`process_start`): a worker that reused the pid is another one
    gpu: str
    since: float  # when its first epoch began: from then on it trained beside the others
    began: float  # when its last epoch began
    ended: float
    images_per_s: float


def probe_path(results: Path, manifest_id: str, gpu: str, config_hash: str) -> Path:
    """The probe of one configuration on one GPU of this host."""
    name = ".".join(file_part(part) for part in (host_id(), gpu, config_hash))  # "." never occurs in a part
    return worker_folder(results, manifest_id) / "probes" / f"{name}.json"


def write_probe(results: Path, manifest_id: str, probe: Probe) -> None:
    _write(probe_path(results, manifest_id, probe.gpu, probe.config_hash), asdict(probe))


def read_probes(results: Path, manifest_id: str) -> list[Probe]:
    """The probes of this host's GPUs (a results folder that hosts share holds other hosts' too)."""
    folder = worker_folder(results, manifest_id) / "probes"
    return [Probe(**data) for data in _read(folder, f"{file_part(host_id())}.*.json")]


def write_rate(results: Path, manifest_id: str, rate: Rate) -> None:
    _write(worker_folder(results, manifest_id) / "rates" / f"{file_part(host_id())}-{rate.pid}.json", asdict(rate))


def read_rates(results: Path, manifest_id: str) -> dict[int, Rate]:
    """The last epoch each worker of this host reported, by pid."""
    folder = worker_folder(results, manifest_id) / "rates"
    rates = [Rate(**data) for data in _read(folder, f"{file_part(host_id())}-*.json")]
    return {r.pid: r for r in rates}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the last report or the one before, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read(folder: Path, pattern: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile: the sweep was cleaned up
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


# -- what the controller decides ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One pass's packing: how many workers each GPU should have, and by GPU the newest workers beyond what it keeps,
    which leave after their trial."""

    workers: dict[str, int]
    retire: dict[str, list[WorkerRecord]]


class Packer:
    """The controller's half of `--trials-per-gpu auto` on this host: it keeps each GPU's aggregate images/s at each
    worker count its workers were measured at, and plans each pass from their probes and rates."""

    def __init__(self, results: Path, manifest_id: str, gpus: list[str], cores: int) -> None:
        self.results, self.manifest_id, self.gpus, self.cores = results, manifest_id, gpus, cores
        self.rates: dict[str, dict[int, float]] = {g: {} for g in gpus}
        self.fits: dict[str, Fit] = {g: Fit(cores=cores, gpus=len(gpus)) for g in gpus}

    def plan(self, live: list[WorkerRecord], attempts: Iterable[Attempt], pending: set[str], trials_left: int) -> Plan:
        """Workers per GPU and the workers asked to leave, given this host's live workers, the ledger's attempts, the
        config hashes still to train and the trials that need a worker of ours."""
        probes = read_probes(self.results, self.manifest_id)
        reserved = _reserved(attempts)
        reports = read_rates(self.results, self.manifest_id)
        workers: dict[str, int] = {}
        retire: dict[str, list[WorkerRecord]] = {}
        for gpu in self.gpus:
            mine = sorted((w for w in live if w.gpu == gpu), key=lambda w: w.slot)
            self.observe(gpu, [_report(reports, w) for w in mine])
            fit = self.fits[gpu] = self.fit(gpu, probes, reserved, pending)
            workers[gpu] = per_gpu(fit, trials_left, self.rates[gpu])
            leaving = surplus(len(mine), fit, self.rates[gpu])
            if leaving:
                retire[gpu] = mine[len(mine) - leaving :]
        return Plan(workers, retire)

    def observe(self, gpu: str, reports: list[Rate | None]) -> None:
        """Keep the GPU's aggregate images/s at its number of workers, once: when every worker on it (`reports`,
        None for one that has not reported) reported an epoch that began after the newest of them began training,
        so each epoch counted ran wholly beside all the others."""
        seen = self.rates[gpu]
        done = [r for r in reports if r is not None]
        if not reports or len(reports) in seen or len(done) < len(reports):
            return
        newest = max(r.since for r in done)
        if all(r.began >= newest for r in done):
            seen[len(done)] = sum(r.images_per_s for r in done)

    def fit(self, gpu: str, probes: list[Probe], reserved: dict[str, float], pending: set[str]) -> Fit:
        """The GPU's memory and one pending trial's need on it: the GPU's CUDA context plus the largest peak of the
        configurations still to train, from their probes and the reserved memory their finished attempts recorded
        (which also holds what a probe on random images leaves out, such as a dataset kept on the device)."""
        here = [p for p in probes if p.gpu == gpu]
        if not here:
            return Fit(cores=self.cores, gpus=len(self.gpus))
        peaks = dict(reserved)
        for p in here:
            peaks[p.config_hash] = max(peaks.get(p.config_hash, 0.0), p.peak_mb)
        needs = [peaks[h] for h in pending if h in peaks]
        need = max(p.context_mb for p in here) + max(needs) if needs else 0.0
        return Fit(max(p.total_mb for p in here), need, self.cores, len(self.gpus))

    def story(self, gpu: str) -> str:
        """What the GPU's packing rests on: the workers its memory and cores allow, its images/s by worker count."""
        rates = "; ".join(f"{n}: {r:,.0f}" for n, r in sorted(self.rates[gpu].items())) or "none measured"
        return f"memory and cores allow {self.fits[gpu].most()} workers; images/s by workers: {rates}"


def _report(reports: dict[int, Rate], worker: WorkerRecord) -> Rate | None:
    found = reports.get(worker.pid)
    return found if found is not None and found.start == worker.start else None


def _reserved(attempts: Iterable[Attempt]) -> dict[str, float]:
    """The largest reserved memory the attempts of each configuration recorded after training (MB)."""
    out: dict[str, float] = {}
    for a in attempts:
        if a.memory and "reserved_mb" in a.memory:
            h = a.ticket.config_hash
            out[h] = max(out.get(h, 0.0), a.memory["reserved_mb"])
    return out
