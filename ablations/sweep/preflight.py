"""`sweep --dry-run`: every check a sweep makes before it writes (its trials, their data, the device they ask for,
the ledger, MLflow, the results folder, a Slurm partition), and nothing written; then the plan and what is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ablations.config import Host
from ablations.datafiles import MissingData, download_root
from ablations.errors import SenetError
from ablations.outcomes import Standing
from ablations.study.spec import StudySpec
from ablations.study.trials import Trial, expand, plan, plan_trials
from ablations.sweep.ledger import CONNECT_S, Ledger, check_storage, is_local
from ablations.sweep.slurm import check_nodes, check_partition
from ablations.sweep.start import SweepOptions, check_host
from ablations.sweep.status import counts, statuses
from ablations.tracking import Tracker, tracking_uri
from ablations.urls import redact


def check_folders(trials: list[Trial]) -> None:
    """Image-folder trials name a root with train/ and val/ (their files are scanned when a trial starts, so this is
    the check that can be made before anything is written; a key holds the folder's path, not its files)."""
    for t in trials:
        data = t.config.data
        if data.dataset != "imagefolder":
            continue
        if data.root is None:
            raise SenetError(f"data.root: required for imagefolder ({t.label}); a folder with train/ and val/")
        missing = [s for s in ("train", "val") if not (Path(data.root) / s).is_dir()]
        if missing:
            raise SenetError(f"data.root: {data.root} has no {missing[0]}/ folder ({t.label}); imagefolder needs "
                             f"{data.root}/train and {data.root}/val, one folder per class")  # fmt: skip


def check_devices_fit(trials: list[Trial], gpus: int, where: str) -> None:
    """A GPU trial's group (`train.devices`) fits on one host of the sweep, which has `gpus` GPUs (`where` says
    which host that is); else one line before anything is written, not a failure at the trial's start."""
    for t in trials:
        n = t.config.train.devices
        if t.config.train.device == "cuda" and n > gpus:
            raise SenetError(f"train.devices: {n} is not allowed for {t.label}: {where} has {gpus} GPU(s); allowed: "
                             f"1..{max(gpus, 1)}, or a host with more (a group spans several hosts only under "
                             "--launcher slurm)")  # fmt: skip


def check_results(results: Path) -> None:
    """The results folder could be written, without leaving anything: a probe folder is made and removed in it, or
    in the nearest folder above it that exists (permission bits alone do not tell root, or a read-only mount)."""
    here = results.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=here))
    except OSError as err:
        raise SenetError(f"--results: {results} is not a writable folder ({here}: {err.strerror or err})") from None


def dry_run(spec: StudySpec, opts: SweepOptions, slurm: Any = None) -> str:
    """The dry run's report: the trials' plan, their cost, what is done, what was checked.

    Raises:
        SenetError: what the sweep would refuse before writing: bad input, missing data it may not download, CUDA
            asked of a host without it, an image folder without train/ or val/, an unreachable store, a results
            folder that cannot be written, a partition the cluster lacks.
    """
    notes: list[str] = []
    if slurm is not None:
        check_partition(slurm.partition)
        host = Host("cuda" if slurm.gpus_per_node else "cpu")  # the nodes' device, not the login node's
    else:
        host = Host.here()
    try:
        trials = plan_trials(spec, opts.overrides, host)
        fetch = False
    except MissingData as missing:  # a sweep may download it first (data.download=true); its keys then hold it
        if not missing.data.download:
            raise
        trials, fetch = expand(spec, opts.overrides, host=host, version=2), True  # version 2 reads no data files
        notes.append(f"{missing.data.dataset} is missing: the sweep downloads it into {download_root(missing.data)} "
                     "first (data.download=true); trial keys are made once it is there")  # fmt: skip
    check_host(trials, host)
    check_folders(trials)
    if slurm is not None:
        check_nodes([(t.label, t.config.train.devices) for t in trials], slurm.gpus_per_node)
    url = opts.storage_url
    check_storage(url)
    uri = tracking_uri(opts.tracking_uri, opts.results)
    if not uri.startswith("sqlite:"):
        Tracker(uri, opts.results).check()
    check_results(opts.results)
    done = ""
    if Ledger.exists(url) and not fetch:
        ledger = Ledger.open(url, patience=CONNECT_S)
        try:
            found = statuses(trials, ledger.attempts(), opts.max_retries)
        finally:
            ledger.close()  # a SQLite ledger's -wal and -shm files go with its last connection
        c = counts(found)
        done = (f"; {c.get(Standing.DONE, 0)} done, {c.get(Standing.FAILED, 0)} failed, "
                f"{c.get(Standing.PENDING, 0) + c.get(Standing.RUNNING, 0)} to train")  # fmt: skip
    table = plan(trials)
    ledger = f"ledger {redact(url)}" + ("" if Ledger.exists(url) else " (new)")
    where = "a Slurm job array" if slurm is not None else "this host"
    lines = [
        table.to_string(index=False),
        f"{len(trials)} trials, {int(table['epochs'].sum())} epochs in all{done}",
        f"checked: data, device {host.device} ({where}), {ledger}, MLflow {redact(uri)}, results {opts.results}"
        + ("" if is_local(url) else " (database reached)"),
        *(f"note: {n}" for n in notes),
        "nothing was written (dry run)",
    ]
    return "\n".join(lines)
