"""The command line's `sweep`, `worker` and `cancel`: where and how a sweep runs, on this host or through a launcher
(`--launcher slurm`: its workers as Slurm job arrays, `ablations.sweep.launch`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ablations.errors import SenetError
from ablations.paths import STORAGE_ENV

if TYPE_CHECKING:
    from ablations.study.spec import StudySpec

MAX_WORKERS = 256
# --launcher slurm's own options: (flag, SlurmOptions field, type, help). None of them gives --gpus another meaning.
_SLURM = (
    ("--partition", "partition", str, "Slurm partition of the array's tasks"),
    ("--total-gpus", "total_gpus", int, "GPUs in all, as tasks of --gpus-per-node each (default 1 task)"),
    ("--nodes", "nodes", int, "tasks (one node each) instead of --total-gpus"),
    ("--gpus-per-node", "gpus_per_node", int, "GPUs of each task (default 1; 0: CPU-only tasks of --workers)"),
    ("--time", "time", str, "each task's time limit: minutes or [D-]HH:MM:SS (default 60); it requeues after it"),
    ("--cpus-per-gpu", "cpus_per_gpu", int, "CPUs per GPU (per worker on CPU-only tasks; default 4)"),
    ("--mem", "mem", str, "memory per task, as sbatch takes it (32G)"),
    ("--array-parallelism", "array_parallelism", int, "tasks of the array running at once at most"),
    ("--account", "account", str, "Slurm account to charge"),
    ("--qos", "qos", str, "Slurm quality of service"),
    ("--grace", "grace_s", int, "seconds before the time limit that the workers checkpoint (default 90)"),
)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs to a dict; values are YAML scalars or lists (`8`, `true`, `[2, 3]`, `max`), one each."""
    out: dict[str, Any] = {}
    for item in items:
        key, raw = _pair(item, "--set")
        if len(split_levels(raw)) > 1:
            raise SenetError(f"--set {key}: {raw!r} is not one value; a list is written [{raw}], and a "
                             f"factor's levels for one sweep come after the study: senet-ablate sweep STUDY "
                             f"{key}={raw}")  # fmt: skip
        out[key] = _value(key, raw, "--set")
    return out


def study_overrides(sets: Sequence[str], words: Sequence[str]) -> dict[str, Any] | None:
    """A study run's overrides (`ablations.study.overrides`) from `--set` and the words after the study, which take
    the same `KEY=VALUE` and also a comma list: that factor's levels. `reference.KEY=VALUE` names a reference level,
    `seeds=N` (or a list) the seeds; later words win. None when neither gives any (read: as the sweep recorded them).
    """
    from ablations.study.overrides import LEVELS, REFERENCE  # the study's vocabulary, imported once a command runs

    if not sets and not words:
        return None
    out: dict[str, Any] = {}
    for key, value in [*parse_set(sets).items(), *(_word(w) for w in words)]:
        if key.startswith("reference."):
            key = REFERENCE + key.removeprefix("reference.")
        elif key.startswith(LEVELS) and key.removeprefix(LEVELS).startswith("reference."):
            raise SenetError(f"{key.removeprefix(LEVELS)}: a reference is one level, e.g. reference.se.reduction=8")
        out[key] = value
    return out


def _word(word: str) -> tuple[str, Any]:
    from ablations.study.overrides import LEVELS, SEEDS

    key, raw = _pair(word, "override")
    parts = split_levels(raw)
    if len(parts) == 1:
        return key, _value(key, raw, "override")
    values = [_value(key, p, "override") for p in parts]
    return (SEEDS, values) if key == SEEDS else (LEVELS + key, values)


def _pair(item: str, option: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
        raise SenetError(f"{option}: {item!r} is not KEY=VALUE, e.g. {'--set ' * (option == '--set')}se.reduction=8")
    return key.strip(), raw


def _value(key: str, raw: str, option: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as err:
        raise SenetError(f"{option} {key}: {raw!r} is not a valid value ({err.__class__.__name__})") from None


def split_levels(raw: str) -> list[str]:
    """`raw` cut at its commas outside brackets, braces and quotes: `4,8` → two values, `[2,3]` and `'a,b'` one."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    return [*parts, raw[start:]]


def count(value: int, option: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise SenetError(f"{option}: {value} is not allowed; allowed: an integer in {low}..{high}")
    return value


def launcher_options(q: argparse.ArgumentParser) -> None:
    """`--launcher` and the Slurm launcher's options (defaults: the study's `launcher.slurm`, the user's profile)."""
    q.add_argument("--launcher", choices=["local", "slurm"], default="local", help="where the workers run: on this "
                   "host (default) or as a Slurm job array (see README, On a Slurm cluster)")  # fmt: skip
    g = q.add_argument_group("Slurm (--launcher slurm; defaults from the study's launcher.slurm, then "
                             "~/.config/senet-ablate/launcher.yaml)")  # fmt: skip
    for flag, dest, kind, text in _SLURM:
        g.add_argument(flag, dest=f"slurm_{dest}", type=kind, help=text, metavar=flag.lstrip("-").upper())
    g.add_argument("--slurm", dest="slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm constraint=a100 (repeatable)")  # fmt: skip
    g.add_argument("--no-requeue", dest="slurm_requeue", action="store_const", const=False,
                   help="do not requeue a preempted or timed-out task")  # fmt: skip
    g.add_argument("--detach", action="store_true", help="submit and leave; `status` follows, `cancel` stops")


def slurm_options(args: argparse.Namespace, spec: Any):  # type: ignore[no-untyped-def]
    """The Slurm launcher's options for `spec` (None under --launcher local; refusing Slurm flags given with it)."""
    from ablations.sweep.slurm import parse_passthrough, resolve_options

    given = {d: getattr(args, f"slurm_{d}") for _, d, _, _ in _SLURM}
    given["requeue"] = args.slurm_requeue
    if args.launcher != "slurm":
        named = [f for f, d, _, _ in _SLURM if given[d] is not None] + (["--slurm"] if args.slurm_extra else [])
        named += ["--detach"] if args.detach else []
        if named:
            raise SenetError(f"{named[0]}: only with --launcher slurm (the workers run on this host otherwise)")
        return None
    given["slurm"] = parse_passthrough(args.slurm_extra)
    return resolve_options(given, spec.launcher, spec.where)


def sweep_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """`sweep` and `worker`: where and how the sweep runs."""
    from ablations.sweep.slots import parse_gpus, parse_per_gpu
    from ablations.sweep.start import SweepOptions

    workers = count(args.workers, "--workers", 1, MAX_WORKERS)
    count(args.max_retries, "--max-retries", 0, 1000)
    recycle = 1 if args.fresh_process else args.recycle_after
    count(recycle, "--recycle-after", 1, 1_000_000)
    max_mb = args.max_worker_mb
    if max_mb is not None and not max_mb > 0:
        raise SenetError(f"--max-worker-mb: {max_mb} is not allowed; allowed: megabytes > 0")
    if args.launcher == "slurm" and args.gpus:
        raise SenetError("--gpus: not with --launcher slurm (each task uses the GPUs Slurm gives it); allowed: "
                         "--total-gpus, or --nodes with --gpus-per-node")  # fmt: skip
    return SweepOptions(
        results=args.results,
        storage=args.storage or os.environ.get(STORAGE_ENV),
        tracking_uri=args.tracking_uri,
        workers=workers,
        gpus=parse_gpus(args.gpus, os.environ.get("CUDA_VISIBLE_DEVICES")),  # a scheduler's allocation, if any
        trials_per_gpu=parse_per_gpu(str(args.trials_per_gpu)),
        max_retries=args.max_retries,
        fail_fast=getattr(args, "fail_fast", False),  # `worker` has no --fail-fast
        overrides=study_overrides(args.set, args.overrides) or {},
        progress=not args.no_progress and sys.stderr.isatty(),
        recycle_after=recycle,
        max_rss_mb=max_mb,
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from ablations.study.load import load_spec

    opts = sweep_options(args)
    spec = load_spec(args.study)
    if spec.search_only:
        raise SenetError(f"{args.study}: is a search, with no grid to sweep; plan it with senet-ablate search "
                         f"{args.study} --dry-run")  # fmt: skip
    slurm = slurm_options(args, spec)
    if args.dry_run:
        from ablations.sweep.preflight import dry_run

        print(dry_run(spec, opts, slurm))
        return 0
    if slurm is not None:
        from ablations.sweep.launch import launch

        code, statuses = launch(spec, opts, slurm, detach=args.detach)
    else:
        from ablations.sweep.runner import run

        code, statuses = run(spec, opts)
    from ablations.reporting.summary import print_summary  # after the sweep: its imports would delay the workers

    if not args.detach:
        print_summary(statuses, opts.tracking_uri, opts.results)
    return code


def cmd_search(args: argparse.Namespace) -> int:
    from ablations.study.load import load_spec

    spec = load_spec(args.study)
    if spec.search is None:
        raise SenetError(f"{args.study}: has no search section; give one (README, Searching) or run its grid with "
                         f"senet-ablate sweep {args.study}")  # fmt: skip
    if args.confirm:
        return _confirm(spec, args)
    if args.dry_run:
        from ablations.sweep.search_preflight import search_dry_run

        print(search_dry_run(spec, timed=not args.no_timing))
        return 0
    from ablations.sweep.search_run import search, summary_lines

    opts, slurm = sweep_options(args), slurm_options(args, spec)
    if slurm is not None and args.detach:
        raise SenetError("--detach: not with search (its controller asks each batch once the last is told; run it in "
                         "tmux or screen, or as a job of its own)")  # fmt: skip
    arms = search(spec, opts, slurm)
    print("\n".join(summary_lines(spec, arms)))
    return 0


def _confirm(spec: StudySpec, args: argparse.Namespace) -> int:
    """`search NAME --confirm`: the confirmation grid as a study file in the working folder, validated first."""
    from ablations.study.searched import confirm_tree
    from ablations.study.spec import parse_spec

    tree = confirm_tree(spec, args.results)
    parse_spec(tree, "--confirm")
    path = Path(f"{tree['name']}.yaml")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(tree, sort_keys=False))
    tmp.replace(path)
    print(f"confirmation study written to {path}: senet-ablate sweep {path} (then senet-ablate report {path})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ablations.reporting.summary import print_summary
    from ablations.study.searched import searched
    from ablations.sweep.status import find_spec

    opts = sweep_options(args)
    found = find_spec(args.study, opts.storage_url)
    spec = searched(found, opts.results)  # a search: the designs it asked so far
    slurm = slurm_options(args, spec)
    if found.search_only and slurm is None:  # joins each batch the controller asks, until the search is over
        from ablations.sweep.search_run import join_search

        code, statuses = join_search(found, opts)
    elif slurm is not None:
        from ablations.sweep.launch import launch

        code, statuses = launch(spec, opts, slurm, detach=args.detach, create=False)
    else:
        from ablations.sweep.runner import run

        code, statuses = run(spec, opts, create=False)
    if not args.detach:
        print_summary(statuses, opts.tracking_uri, opts.results)
    return code


def cmd_cancel(args: argparse.Namespace) -> int:
    from ablations.sweep.launch import cancel
    from ablations.sweep.status import find_spec, ledger_url

    storage = ledger_url(args.storage or os.environ.get(STORAGE_ENV), args.results)
    print(cancel(storage, find_spec(args.study, storage).name))
    return 0
