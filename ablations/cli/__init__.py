"""The `senet-ablate` command line. User errors become one line and exit code 2; a ledger out of reach, one and 75."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ablations.cli.parser import (
    command,
    place,
    reading,
    server_options,
    slots,
    study_words,
    top_parser,
    tracking,
    trained,
)
from ablations.cli.results import add_commands as add_results_commands
from ablations.cli.sweep import (
    MAX_WORKERS,
    cmd_cancel,
    cmd_search,
    cmd_sweep,
    cmd_worker,
    count,
    launcher_options,
    parse_set,
    study_overrides,
)
from ablations.datafiles import data_under
from ablations.errors import SenetError, StoreUnavailable
from ablations.exits import exit_now
from ablations.paths import RESULTS, STORAGE_ENV, check_environment

if TYPE_CHECKING:
    from ablations.study.spec import StudySpec
    from ablations.sweep.status import ReadOptions


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
    parser = top_parser()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do, one of:")

    p = command(sub, "profile", _cmd_profile, "params and GFLOPs of a model configuration, beside the paper's",
                ["senet-ablate profile --model se_resnet50 --set se.reduction=8",
                 "senet-ablate profile --paper"])  # fmt: skip
    p.add_argument("--model", help="registry name, e.g. resnet50 or se_resnet50 (see `senet-ablate models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option, e.g. se.reduction=8")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    p.add_argument("--paper", action="store_true", help="reproduce the paper's complexity columns")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration")

    command(sub, "models", _cmd_models, "list the registered backbones and their options", ["senet-ablate models"])
    command(
        sub, "list", _cmd_list, "the shipped studies, what they mirror, and their trial counts", ["senet-ablate list"]
    )

    sw = command(sub, "sweep", cmd_sweep, "train every trial of a study that has no finished result yet",
                 ["senet-ablate sweep demo --workers 2",
                  "senet-ablate sweep demo se.reduction=4,8,16 seeds=3 --dry-run",
                  "senet-ablate sweep paper --gpus 0,1 --trials-per-gpu auto"])  # fmt: skip
    place(sw)
    study_words(sw)
    slots(sw)
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed trial")
    sw.add_argument("--dry-run", action="store_true", help="print the expanded trials and their cost, run nothing")
    sw.add_argument("-m", "--multirun", action="store_true", help="Hydra's habit, accepted: a sweep runs every trial")
    launcher_options(sw)

    se = command(sub, "search", cmd_search, "search SE designs for the lowest validation error within a budget "
                 "(multi-objective, on Optuna)", ["senet-ablate search NAME --dry-run",
                 "senet-ablate search NAME --workers 2",
                 "senet-ablate search NAME --launcher slurm --total-gpus 8"])  # fmt: skip
    place(se)
    slots(se)
    launcher_options(se)
    se.set_defaults(overrides=[])
    se.add_argument("--dry-run", action="store_true", help="print the plan (space, feasible share, costs, time)")
    se.add_argument("--no-timing", action="store_true", help="leave out the time estimate (it times a few steps)")
    se.add_argument("--confirm", action="store_true", help="write a grid study of the fronts' factors on fresh seeds "
                    "(<study>_confirm.yaml), for the paired tests of a grid report")  # fmt: skip

    wk = command(sub, "worker", cmd_worker, "join a running sweep from another shell or host (or submit more Slurm "
                 "tasks)", ["senet-ablate worker demo --workers 2", "senet-ablate worker paper --launcher slurm "
                 "--total-gpus 4"])  # fmt: skip
    place(wk)
    study_words(wk)
    slots(wk)
    launcher_options(wk)

    cn = command(sub, "cancel", cmd_cancel, "cancel the Slurm jobs a study's sweeps submitted (by id, nothing else)",
                 ["senet-ablate cancel paper --results /shared/senet/results"])  # fmt: skip
    place(cn)

    st = command(sub, "status", _cmd_status, "done / running / failed / pending trials of a study, or the studies of "
                 "a results folder", ["senet-ablate status demo", "senet-ablate status --results /shared/senet/results",
                 "senet-ablate status mystudy --results /shared/senet/results"])  # fmt: skip
    place(st, optional=True)
    study_words(st)
    reading(st)
    add_results_commands(sub, read=_read_options)

    rt = command(sub, "retry", _cmd_retry, "queue chosen trials again (failed ones by default); `sweep` trains them",
                 ["senet-ablate retry demo", "senet-ablate retry demo --trial KEY"])  # fmt: skip
    place(rt)
    study_words(rt)
    rt.add_argument("--failed", action="store_true", help="every failed trial (the default without --trial)")
    rt.add_argument("--trial", action="append", default=[], metavar="KEY", help="a trial key (`status`), repeatable")

    rp = command(sub, "report", _cmd_report, "paper-style tables, figures and CSV of a study, from MLflow",
                 ["senet-ablate report demo", "senet-ablate report demo --out reports/demo-cpu"])  # fmt: skip
    place(rp)
    study_words(rp)
    reading(rp)
    rp.add_argument("--out", type=Path, help="report folder (default reports/<study>/)")

    ev = command(sub, "evaluate", _cmd_evaluate, "single-crop top-1/top-5 error of imported weights on an image "
                 "folder", ["senet-ablate evaluate --weights timm:legacy_seresnet50 --data "
                 "imagefolder:/data/imagenet"])  # fmt: skip
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. "
                    "model.stem_pool=caffe")  # fmt: skip
    trained(ev)

    ko = command(sub, "knockout", _cmd_knockout, "a trained network with the SE gates of each stage / block fixed at "
                 "1", ["senet-ablate knockout --run RUN_ID --results results", "senet-ablate knockout --weights "
                 "timm:legacy_seresnet50 --data imagefolder:/data/imagenet-subset --rows stages"])  # fmt: skip
    ko.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option (with --weights)")
    trained(ko)
    ko.add_argument("--run", help="an MLflow run id of a finished trial instead of --model/--weights")
    tracking(ko, "where the run trained")
    ko.add_argument("--split", choices=["test", "val"], default="test", help="the run's split, without --data")
    ko.add_argument("--rows", choices=["stages", "blocks", "both"], default="both", help="knock out per stage, "
                    "per block or both (a row for all SE blocks always)")  # fmt: skip
    ko.add_argument("--no-control", action="store_true", help="skip the control (gates fixed at their mean)")

    ex = command(sub, "excitation", _cmd_excitation, "role of excitation (paper Figs. 6-7) for a run id or a study's "
                 "reference", ["senet-ablate excitation demo --classes 0 1 2 3", "senet-ablate excitation --weights "
                 "timm:legacy_seresnet50 --data imagefolder:/data/imagenet"])  # fmt: skip
    ex.add_argument("target", nargs="?", help="an MLflow run id of a trial, or a study (its reference model, every "
                    "finished seed); or none, with --weights and --data")  # fmt: skip
    ex.add_argument("--classes", nargs="+", help="classes to draw: indices (default: the first 4); with --weights "
                    "also WordNet ids or names (default: the paper's goldfish, pug, plane, cliff)")  # fmt: skip
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the study's overrides (with "
                    "--weights: model options)")  # fmt: skip
    tracking(ex, "where the study's or run's sweep ran")
    ex.add_argument("--out", type=Path, help="figure folder (default reports/<target or model>/excitation)")
    trained(ex, device=False)
    ex.add_argument("--per-class", type=int, default=50, help="with --weights: images per class (the paper: 50)")

    sv = command(sub, "server", _cmd_server, "an MLflow tracking server for many hosts (e.g. on PostgreSQL)",
                 ["senet-ablate server --host 127.0.0.1 --port 5000 --artifacts-destination "
                  "/shared/senet/artifacts"])  # fmt: skip
    sv.add_argument("--backend-store-uri", help="database URL; default $MLFLOW_BACKEND_STORE_URI (keeps passwords "
                    "out of the process list), else sqlite in the results folder")  # fmt: skip
    sv.add_argument("--artifacts-destination", help="where run artifacts go (default <results>/artifacts)")
    sv.add_argument("--results", type=Path, default=RESULTS, help="folder of the default database and artifacts "
                    "(default ./results)")  # fmt: skip
    server_options(sv, 4, ", MLflow's; each costs seconds of CPU to start and a few hundred MB")

    ui = command(sub, "ui", _cmd_ui, "the MLflow UI on the results folder, bound to 127.0.0.1",
                 ["senet-ablate ui", "senet-ablate ui --results /shared/senet/results --port 5001"])  # fmt: skip
    tracking(ui, "the results folder whose runs it shows")
    server_options(ui, 1, ": one person browsing; MLflow's default of 4 takes 4× the start-up time and memory")
    return parser


def _study(ref: str, opts: ReadOptions) -> StudySpec:
    """The study `status`, `retry` and `report` read: its spec, or for a search the sweep of what it trained."""
    from ablations.study.searched import searched
    from ablations.sweep.status import find_spec

    return searched(find_spec(ref, opts.storage_url), opts.results)


def _read_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """`status` and `report`: where the sweep is read back from."""
    from ablations.sweep.status import ReadOptions

    count(args.max_retries, "--max-retries", 0, 1000)
    return ReadOptions(
        results=args.results,
        storage=args.storage or os.environ.get(STORAGE_ENV),
        tracking_uri=args.tracking_uri,
        overrides=study_overrides(args.set, args.overrides),  # none given: as the sweep recorded them
        device=getattr(args, "device", None),
        max_retries=args.max_retries,
    )


def _as_swept(spec: StudySpec, opts: ReadOptions) -> StudySpec:
    """The study as the sweep read back ran it, for the readers that walk its grid (`report`, `excitation`): its
    levels, reference and seeds from the overrides given, else from those its last sweep recorded."""
    from ablations.study.overrides import reshape
    from ablations.sweep.ledger import CONNECT_S, Ledger, check_storage

    url, overrides = opts.storage_url, opts.overrides
    check_storage(url)
    if overrides is None and Ledger.exists(url):
        try:
            overrides = Ledger.open(url, patience=CONNECT_S).note(spec.name).get("overrides")
        except OSError as err:  # as `study_status` says it
            raise SenetError(f"--storage: cannot open the ledger {url} for reading ({err.strerror or err})") from None
    return reshape(spec, overrides or {})


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
    from ablations.sweep.status import describe, study_status

    opts = _read_options(args)
    if args.study is None:
        return print_studies(opts)
    spec = _study(args.study, opts)
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

    opts = _read_options(args)
    print(retry(_study(args.study, opts), opts, set(args.trial)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ablations.reporting.report import write_report
    from ablations.sweep.status import find_spec

    opts = _read_options(args)
    spec = find_spec(args.study, opts.storage_url)
    if spec.search_only:  # its own report: a grid report of its designs would read test error selected on
        from ablations.reporting.search_report import write_search_report

        print(f"report written to {write_search_report(spec, opts, out=args.out)}")
        return 0
    path = write_report(_as_swept(spec, opts), opts, out=args.out, named=args.study)
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
                       overrides=study_overrides(args.set, ()))  # fmt: skip
    target = _as_swept(load_spec(args.target), opts) if names_a_study(args.target) else args.target  # else a run id
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse's own exit: --help, --version (0) or a usage error (2, said on stderr)
        return done.code if isinstance(done.code, int) else 2
    # MLflow's INFO lines (database migrations, monitors) drown the progress bars; it reads this variable when
    # it configures its loggers on import, so a level set on the logger before that import would be undone.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    try:
        check_environment()  # numeric variables the sweep, its workers and the ledger read: a line, not a traceback
        results = getattr(args, "results", None)
        with data_under(results) if results is not None else contextlib.nullcontext():  # downloads follow --results
            return int(args.func(args))
    except (SenetError, StoreUnavailable) as err:
        print(f"senet-ablate: error: {err}", file=sys.stderr)
        return StoreUnavailable.exit_code if isinstance(err, StoreUnavailable) else 2


def console() -> None:
    """The `senet-ablate` command: `main`, then an immediate exit (`ablations.exits`). Output piped into a reader
    that stops early (`| head`) ends the command quietly, as other command-line tools do."""
    try:
        code = main()
    except BrokenPipeError:
        code = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    exit_now(code)
