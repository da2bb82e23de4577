"""The command line's results out of a results folder: `export` (one row per trial, CSV or parquet), `clean` (what
finished trials no longer need), and `status` without a study (the studies the folder's ledger holds)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ablations.cli.parser import command, place, reading, study_words

if TYPE_CHECKING:
    from ablations.sweep.status import ReadOptions

Options = Callable[[argparse.ArgumentParser], None]  # adds options to a subcommand's parser
Read = Callable[[argparse.Namespace], "ReadOptions"]  # the parsed options as `ReadOptions`
CLEAN_KEPT = """\
kept by default: each finished trial's weights in checkpoint.pt, which `knockout --run` and `excitation` read (and
the report's excitation section); its result.json and train.log. Removed: the optimizer, scheduler and RNG states
inside that checkpoint (they only resume training, and a trial with a result is never trained again), checkpoints
set aside as unloadable, and temp files of interrupted writes. --all removes the final checkpoints too. Running,
pending and failed trials are never touched (a failed trial resumes from its checkpoint after `retry`)."""


def add_commands(sub: argparse._SubParsersAction, read: Read) -> None:  # type: ignore[type-arg]
    """`export` and `clean`, with the options `status` and `report` read a sweep back with (`read` turns them into
    `ReadOptions`)."""
    ex = command(sub, "export", functools.partial(cmd_export, read), "one row per trial of a study (factors, seed, "
                 "run id, state, metrics) as CSV or parquet", ["senet-ablate export demo",
                 "senet-ablate export demo --format parquet --out demo.parquet"], description="Write one row per "
                 "trial of a study: level, factors, seed, key, MLflow run id, state and every summary "
                 "metric.")  # fmt: skip
    place(ex)
    study_words(ex)
    reading(ex)
    ex.add_argument("--format", metavar="{csv,parquet}", help="file format (default: from the --out suffix, else csv)")
    ex.add_argument("--out", type=Path, help="file to write, or - for CSV on stdout (default "
                    "reports/<study>/trials.<format>)")  # fmt: skip

    cl = command(sub, "clean", functools.partial(cmd_clean, read), "free the disk finished trials no longer need "
                 "(their weights are kept)", ["senet-ablate clean demo --dry-run", "senet-ablate clean demo"],
                 description="Remove what a study's finished trials no longer need under "
                 "results/runs/<key>/.")  # fmt: skip
    cl.epilog = f"{cl.epilog}\n\n{CLEAN_KEPT}"
    place(cl)
    study_words(cl)
    reading(cl)
    cl.add_argument("--dry-run", action="store_true", help="list what would be removed and its size, change nothing")
    cl.add_argument("--all", action="store_true", help="also remove the final checkpoints (`knockout --run` and "
                    "`excitation` can then no longer read those trials)")  # fmt: skip


def cmd_export(read: Read, args: argparse.Namespace) -> int:
    from ablations.reporting.export import output, recorded_spec, trial_frame, write_frame

    output(args.out, args.format, "study")  # a bad --format / --out is refused before anything is read
    opts = read(args)
    spec = recorded_spec(args.study, opts)
    path, fmt = output(args.out, args.format, spec.name)
    frame = trial_frame(spec, opts)
    write_frame(frame, path, fmt)
    if path is not None:
        print(f"{len(frame)} trials of {spec.name} written to {path} ({fmt}, {len(frame.columns)} columns)")
    return 0


def cmd_clean(read: Read, args: argparse.Namespace) -> int:
    from ablations.reporting.export import recorded_spec
    from ablations.sweep.clean import apply, plan_clean, render
    from ablations.sweep.status import study_status

    opts = read(args)
    spec = recorded_spec(args.study, opts)
    plan = plan_clean(spec.name, opts.results, study_status(spec, opts)[1], everything=args.all)
    print(render(plan, None if args.dry_run else apply(plan, opts.storage_url)))
    return 0


def print_studies(opts: ReadOptions) -> int:
    """`status` without a study: each study of the ledger with its counts, when its last sweep started, its disk."""
    from ablations.sweep.clean import disk_use, megabytes
    from ablations.sweep.status import recorded_studies
    from ablations.urls import redact

    records = recorded_studies(opts.storage_url, opts.max_retries)
    print(f"{redact(opts.storage_url)}: {len(records)} stud{'y' if len(records) == 1 else 'ies'}")
    width = max((len(r.name) for r in records), default=0)
    for r in records:
        when = datetime.fromtimestamp(r.updated, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if r.updated else "—"
        disk = megabytes(disk_use(opts.results, r.standing.items()).total)
        print(f"  {r.name:{width}s}  {r.line()}  · last sweep {when} · {disk} under {opts.results / 'runs'}")
    if records:
        print(f"`senet-ablate status STUDY --results {opts.results}` shows a study's trials")
    return 0
