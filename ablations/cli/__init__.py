"""The `senet-ablate` command line. User errors become one line and exit code 2; a ledger out of reach, one and 75."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ablations.cli.results import add_commands as add_results_commands
from ablations.cli.sweep import MAX_WORKERS, cmd_cancel, cmd_sweep, cmd_worker, count, launcher_options, parse_set
from ablations.errors import SenetError, StoreUnavailable
from ablations.exits import exit_now
from ablations.paths import RESULTS, STORAGE_ENV, check_environment


def _cmd_profile(args: argparse.Namespace) -> int:
    from ablations.profile import print_rows, profile, profile_paper

    if args.paper:
        rows = profile_paper()
    elif args.model:
        rows = profile(args.model, parse_set(args.set), args.input_size)
    else:
        raise SenetError("profile: give --model NAME or --paper")
    for row in rows if args.json else ():
        print(json.dumps(row.as_dict(), sort_keys=True))
    if not args.json:
        print_rows(rows, paper=args.paper)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="senet-ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="params and GFLOPs of a model configuration, beside the paper's")
    p.add_argument("--model", help="registry name, e.g. resnet50 or se_resnet50 (see `senet-ablate models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option, e.g. se.reduction=8")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    p.add_argument("--paper", action="store_true", help="reproduce the paper's complexity columns")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration")
    p.set_defaults(func=_cmd_profile)

    m = sub.add_parser("models", help="list the registered backbones and their options")
    m.set_defaults(func=_cmd_models)

    ls = sub.add_parser("list", help="the shipped studies, what they mirror, and their trial counts")
    ls.set_defaults(func=_cmd_list)

    def place(q: argparse.ArgumentParser) -> None:
        q.add_argument("study", help="a shipped study name (see `senet-ablate list`) or a path to a YAML spec")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        q.add_argument("--results", type=Path, default=RESULTS, help="output folder (default ./results)")
        q.add_argument("--storage", help="ledger URL; default $SENET_ABLATE_STORAGE (keeps a password out of the "
                       "process list), else ledger.db in the results folder")  # fmt: skip
        q.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
        q.add_argument(
            "--max-retries", type=int, default=1, help="retries of a crashed or out-of-memory trial (default 1)"
        )

    def slots(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workers", type=int, default=1, help="warm worker processes on the CPU (default 1)")
        q.add_argument("--gpus", default="", help="visible CUDA devices: indices, GPU-/MIG-<uuid>, comma-separated")
        q.add_argument("--trials-per-gpu", default="1", help="workers sharing each GPU, or auto (measure, then pack)")
        q.add_argument("--recycle-after", type=int, default=50, help="trials per worker process before a fresh one")
        q.add_argument("--fresh-process", action="store_true", help="one fresh process per trial (--recycle-after 1)")
        q.add_argument("--max-worker-mb", type=float, help="replace a worker whose resident memory grows past this")
        q.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")

    sw = sub.add_parser("sweep", help="train every trial of a study that has no finished result yet")
    place(sw)
    slots(sw)
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed trial")
    sw.add_argument("--dry-run", action="store_true", help="print the expanded trials and their cost, run nothing")
    launcher_options(sw)
    sw.set_defaults(func=cmd_sweep)

    wk = sub.add_parser("worker", help="join a running sweep from another shell or host (or submit more Slurm tasks)")
    place(wk)
    slots(wk)
    launcher_options(wk)
    wk.set_defaults(func=cmd_worker)

    cn = sub.add_parser("cancel", help="cancel the Slurm jobs a study's sweeps submitted (by id, nothing else)")
    place(cn)
    cn.set_defaults(func=cmd_cancel)

    def reading(q: argparse.ArgumentParser) -> None:
        q.add_argument("--device", choices=["cpu", "cuda"], help="what `auto` resolved to in the sweep (default: "
                       "as the ledger recorded it)")  # fmt: skip

    st = sub.add_parser("status", help="done / running / failed / pending trials of a study")
    place(st)
    reading(st)
    st.set_defaults(func=_cmd_status)
    add_results_commands(sub, place, reading, status=st, read=_read_options)

    rt = sub.add_parser("retry", help="queue chosen trials again (failed ones by default); `sweep` trains them")
    place(rt)
    rt.add_argument("--failed", action="store_true", help="every failed trial (the default without --trial)")
    rt.add_argument("--trial", action="append", default=[], metavar="KEY", help="a trial key (`status`), repeatable")
    rt.set_defaults(func=_cmd_retry)

    rp = sub.add_parser("report", help="paper-style tables, figures and CSV of a study, from MLflow")
    place(rp)
    reading(rp)
    rp.add_argument("--out", type=Path, help="report folder (default reports/<study>/)")
    rp.set_defaults(func=_cmd_report)

    def trained(q: argparse.ArgumentParser, device: bool = True) -> None:
        """Options naming an imported network and the image folder it is read back on."""
        q.add_argument("--model", help="registry name, e.g. se_resnet50 (with timm:NAME: its configuration)")
        q.add_argument("--weights", help="a .pth / .safetensors file or timm:NAME (see README, imported weights)")
        q.add_argument("--data", help="imagefolder:DIR, one sub-folder per class (DIR/val when it exists)")
        q.add_argument("--image-size", type=int, default=224, help="centre crop after resizing to 256/224 of it")
        q.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
        q.add_argument("--workers", type=int, default=4, help="image decoding processes (default 4)")
        if device:
            q.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
            q.add_argument("--json", action="store_true", help="print the result as one JSON object")
            q.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="single-crop top-1/top-5 error of imported weights on an image folder")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. "
                    "model.stem_pool=caffe")  # fmt: skip
    trained(ev)
    ev.set_defaults(func=_cmd_evaluate)

    ko = sub.add_parser("knockout", help="a trained network with the SE gates of each stage / block fixed at 1")
    ko.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option (with --weights)")
    trained(ko)
    ko.add_argument("--run", help="an MLflow run id of a finished trial instead of --model/--weights")
    ko.add_argument("--results", type=Path, default=RESULTS, help="where the run trained (default ./results)")
    ko.add_argument("--tracking-uri")
    ko.add_argument("--split", choices=["test", "val"], default="test", help="the run's split, without --data")
    ko.add_argument("--rows", choices=["stages", "blocks", "both"], default="both", help="knock out per stage, "
                    "per block or both (a row for all SE blocks always)")  # fmt: skip
    ko.add_argument("--no-control", action="store_true", help="skip the control (gates fixed at their mean)")
    ko.set_defaults(func=_cmd_knockout)

    ex = sub.add_parser("excitation", help="role of excitation (paper Figs. 6-7) for a run id or a study's reference")
    ex.add_argument("target", nargs="?", help="an MLflow run id of a trial, or a study (its reference model, first "
                    "seed); or none, with --weights and --data")  # fmt: skip
    ex.add_argument("--classes", nargs="+", help="classes to draw: indices (default: the first 4); with --weights "
                    "also WordNet ids or names (default: the paper's goldfish, pug, plane, cliff)")  # fmt: skip
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the study's overrides (with "
                    "--weights: model options)")  # fmt: skip
    ex.add_argument("--results", type=Path, default=RESULTS)
    ex.add_argument("--tracking-uri")
    ex.add_argument("--out", type=Path, help="figure folder (default reports/<target or model>/excitation)")
    trained(ex, device=False)
    ex.add_argument("--per-class", type=int, default=50, help="with --weights: images per class (the paper: 50)")
    ex.set_defaults(func=_cmd_excitation)

    sv = sub.add_parser("server", help="an MLflow tracking server for many hosts (e.g. on PostgreSQL)")
    sv.add_argument("--backend-store-uri", help="database URL; default $MLFLOW_BACKEND_STORE_URI (keeps passwords "
                    "out of the process list), else sqlite in the results folder")  # fmt: skip
    sv.add_argument("--artifacts-destination", help="where run artifacts go (default <results>/artifacts)")
    sv.add_argument("--results", type=Path, default=RESULTS)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; see README before exposing)")
    sv.add_argument("--port", type=int, default=5000)
    sv.add_argument("--http-workers", type=int, default=4, help="server processes answering requests (default 4, "
                    "MLflow's; each costs seconds of CPU to start and a few hundred MB)")  # fmt: skip
    sv.set_defaults(func=_cmd_server)

    ui = sub.add_parser("ui", help="the MLflow UI on the results folder, bound to 127.0.0.1")
    ui.add_argument("--results", type=Path, default=RESULTS)
    ui.add_argument("--tracking-uri")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; see README before exposing)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--http-workers", type=int, default=1, help="server processes answering requests (default 1: "
                    "one person browsing; MLflow's default of 4 takes 4× the start-up time and memory)")  # fmt: skip
    ui.set_defaults(func=_cmd_ui)
    return parser


def _read_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """`status` and `report`: where the sweep is read back from."""
    from ablations.sweep.status import ReadOptions

    count(args.max_retries, "--max-retries", 0, 1000)
    return ReadOptions(
        results=args.results,
        storage=args.storage or os.environ.get(STORAGE_ENV),
        tracking_uri=args.tracking_uri,
        overrides=parse_set(args.set) if args.set else None,  # none given: as the sweep recorded them
        device=getattr(args, "device", None),
        max_retries=args.max_retries,
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from ablations.study.load import list_studies
    from ablations.study.trials import expand

    for spec in list_studies():
        trials = expand(spec, {}, version=2)  # version 2 reads no data files: listed on hosts without the data
        mirrors = ", ".join(spec.mirrors) or "—"
        print(f"{spec.name:16s} {len(trials):4d} trials  mirrors {mirrors}\n{'':16s} {spec.description.strip()}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ablations.cli.results import print_studies
    from ablations.sweep.clean import disk_line
    from ablations.sweep.launch import jobs_lines
    from ablations.sweep.status import describe, find_spec, study_status

    opts = _read_options(args)
    if args.study is None:
        return print_studies(opts)
    spec = find_spec(args.study, opts.storage_url)
    found = study_status(spec, opts)[1]
    print(describe(found, opts.results))
    for line in jobs_lines(opts.storage_url, spec.name):  # the Slurm jobs its sweeps submitted, with their states
        print(line)
    disk = disk_line(spec.name, opts.results, found)
    if disk is not None:
        print(disk)
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from ablations.sweep.reconcile import retry
    from ablations.sweep.status import find_spec

    opts = _read_options(args)
    print(retry(find_spec(args.study, opts.storage_url), opts, set(args.trial)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ablations.reporting.report import write_report
    from ablations.sweep.status import find_spec

    opts = _read_options(args)
    path = write_report(find_spec(args.study, opts.storage_url), opts, out=args.out, named=args.study)
    print(f"report written to {path}")
    return 0


def _cmd_excitation(args: argparse.Namespace) -> int:
    from ablations.reporting.excitation import excitation_report, names_a_study
    from ablations.study.load import load_spec
    from ablations.sweep.status import ReadOptions

    if args.weights is not None or args.target is None:
        return _excitation_imported(args)
    out = args.out or Path("reports") / Path(args.target).stem / "excitation"
    if args.classes is not None and not all(c.isdigit() for c in args.classes):
        raise SenetError(f"--classes: {args.classes} is not allowed; allowed: class indices, e.g. --classes 0 3")
    classes = None if args.classes is None else [int(c) for c in args.classes]
    opts = ReadOptions(results=args.results, storage=os.environ.get(STORAGE_ENV), tracking_uri=args.tracking_uri,
                       overrides=parse_set(args.set) if args.set else None)  # fmt: skip
    target = load_spec(args.target) if names_a_study(args.target) else args.target  # else a run id
    paths = excitation_report(target, opts, out, classes)
    for p in paths:
        print(p)
    return 0


def _imported(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The network of --model/--set/--weights and the folder of --data (both required here)."""
    from ablations.reporting.evaluate import imported

    if args.weights is None or args.data is None:
        raise SenetError(f"{args.command}: give --weights (a file or timm:NAME) and --data imagefolder:DIR")
    subject = imported(args.model, parse_set(args.set), args.weights)
    return subject, _folder(args, subject.num_classes)


def _folder(args: argparse.Namespace, num_classes: int):  # type: ignore[no-untyped-def]
    from ablations.data.imagenet import open_folder

    count(args.image_size, "--image-size", 8, 4096)
    count(args.batch_size, "--batch-size", 1, 1_000_000)
    count(args.workers, "--workers", 0, MAX_WORKERS)
    return open_folder(args.data, num_classes, args.image_size)


def _showing_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ablations.reporting.evaluate import evaluate_folder, render
    from ablations.training.engine import pick_device

    subject, folder = _imported(args)
    result = evaluate_folder(subject, folder, batch_size=args.batch_size, workers=args.workers,
                             device=pick_device(args.device), progress=_showing_progress(args))  # fmt: skip
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


def _cmd_knockout(args: argparse.Namespace) -> int:
    from ablations.reporting.evaluate import finished_run, run_split
    from ablations.reporting.knockout import knockout, render
    from ablations.training.engine import pick_device

    if args.run is None:
        subject, folder = _imported(args)
        batches = folder.batches(args.batch_size, args.workers)
    elif args.weights is not None or args.model is not None or args.set:
        raise SenetError("--run: give either --run RUN_ID or --model/--set/--weights, not both")
    else:
        subject = finished_run(args.run, args.results, args.tracking_uri)
        if args.data is not None:
            batches = _folder(args, subject.num_classes).batches(args.batch_size, args.workers)
        else:
            batches = run_split(subject, args.split, args.batch_size)
    result = knockout(subject, batches, pick_device(args.device), rows=args.rows, control=not args.no_control,
                      progress=_showing_progress(args))  # fmt: skip
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


def _excitation_imported(args: argparse.Namespace) -> int:
    from ablations.reporting.imported import excitation_imported

    if args.target is not None:
        raise SenetError("excitation: give either TARGET (a run id or study) or --weights and --data, not both")
    subject, folder = _imported(args)
    out = args.out or Path("reports") / subject.name / "excitation"
    drawn = excitation_imported(subject, folder, out, classes=args.classes, per_class=args.per_class,
                                batch_size=args.batch_size, workers=args.workers)  # fmt: skip
    print(f"blocks {', '.join(drawn.blocks)}; classes {', '.join(drawn.names)} and the mean over all classes")
    for note in drawn.notes:
        print(f"note: {note}")
    for p in drawn.paths:
        print(p)
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from ablations.server import tracking_server

    workers = count(args.http_workers, "--http-workers", 1, 64)
    return tracking_server(args.backend_store_uri, args.artifacts_destination, args.results, args.host, args.port,
                           workers)  # fmt: skip


def _cmd_ui(args: argparse.Namespace) -> int:
    from ablations.server import ui

    workers = count(args.http_workers, "--http-workers", 1, 64)
    return ui(args.tracking_uri, args.results, args.host, args.port, workers)


def _cmd_models(args: argparse.Namespace) -> int:
    from senet_core import list_models, model_info

    for name, info in ((name, model_info(name)) for name in list_models()):
        stages = ",".join(map(str, info.stages))
        print(f"{name:18s} {info.paper_name:12s} stages {stages:10s} options: {' '.join(info.options())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow's INFO lines (database migrations, monitors) drown the progress bars; it reads this variable when
    # it configures its loggers on import, so a level set on the logger before that import would be undone.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    try:
        check_environment()  # numeric variables the sweep, its workers and the ledger read: a line, not a traceback
        return int(args.func(args))
    except (SenetError, StoreUnavailable) as err:
        print(f"senet-ablate: error: {err}", file=sys.stderr)
        return StoreUnavailable.exit_code if isinstance(err, StoreUnavailable) else 2


def console() -> None:
    """The `senet-ablate` command: `main`, then an immediate exit (`ablations.exits`)."""
    exit_now(main())
