"""A study's results out of the harness: one row per trial as a pandas frame (`senet-ablate export`, the
notebook's `ablations.results`), written as CSV or parquet, and the report's analysis as objects
(`ablations.analysis`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablations.errors import SenetError
from ablations.outcomes import RunStatus, Standing
from ablations.study.spec import NAME, StudySpec
from ablations.sweep.status import (
    ReadOptions,
    TrialStatus,
    find_spec,
    recorded_studies,
    study_status,
    summary_of,
    unknown_study,
)
from ablations.tracking import open_store, sqlite_path, tracking_uri

if TYPE_CHECKING:
    import pandas as pd

    from ablations.reporting.analysis import Analysis

FORMATS = {"csv": ".csv", "parquet": ".parquet"}
REPORTS = Path("reports")
# The columns every export has, before the factors (after `level`) and the summary metrics (at the end).
FIRST = ["study", "level"]
TRIAL = ["seed", "key", "run_id", "state", "outcome", "attempts", "duration_s", "reason"]


def recorded_spec(ref: str, opts: ReadOptions) -> StudySpec:
    """The study `ref` names (a shipped name, a spec file, or a name the ledger recorded), if the ledger of `opts`
    holds trials of it.

    Raises:
        SenetError: no ledger there, or none of the study's trials in it (naming the studies it holds).
    """
    url = opts.storage_url
    records = recorded_studies(url, opts.max_retries)
    names = {r.name for r in records}
    if NAME.fullmatch(ref) and ref not in names:  # a name: refused before looking for a spec of it
        raise unknown_study(ref, url, records)
    spec = find_spec(ref, url)
    if spec.name not in names:
        raise unknown_study(spec.name, url, records)
    return spec


def _plain(value: Any) -> Any:
    """A factor's level as a cell: scalars as they are, a list or a mapping as its JSON text (`[2, 3]`), so that
    a column holds one type and parquet can store it."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _from_mlflow(found: list[TrialStatus], opts: ReadOptions) -> dict[str, tuple[str, dict[str, float]]]:
    """Key → (run id, metrics) of the first FINISHED run of each done trial the ledger holds no result or run id
    of (runs of senet-ablate 0.2), from the tracking store when there is one."""
    missing = {s.trial.key for s in found if s.state == Standing.DONE and not (s.summary and s.run_id)}
    uri = tracking_uri(opts.tracking_uri, opts.results)
    store = sqlite_path(uri)
    if not missing or (store is not None and not store.is_file()):
        return {}
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for run in open_store(uri, opts.results).trial_runs(missing, status=RunStatus.FINISHED):
        out.setdefault(run.key, (run.run_id, dict(run.metrics)))
    return out


def trial_frame(spec: StudySpec, opts: ReadOptions) -> pd.DataFrame:
    """One row per trial of `spec`: its study and level, its factors (one column per grid key, `extra` for an
    extra level), seed, key, MLflow run id, where it stands (state, outcome, attempts, wall time in seconds, the
    last failure) and every summary metric of its result (one column each; empty where it has none).

    The summary metrics are the ones its worker recorded in the ledger; for a result the ledger lacks (a ledger
    imported from senet-ablate 0.2) its `result.json`, else its FINISHED MLflow run.
    """
    import pandas as pd

    _, found = study_status(spec, opts)
    mlflow = _from_mlflow(found, opts)
    rows, factors, metrics = [], {}, {}
    for s in found:
        t = s.trial
        summary = summary_of(s, opts.results)
        run_id, logged = mlflow.get(t.key, (s.run_id, {}))
        summary = summary or logged
        factors |= dict.fromkeys(t.factors)
        metrics |= dict.fromkeys(summary)
        rows.append({"study": t.study, "level": t.label, **{k: _plain(v) for k, v in t.factors.items()},
                     "seed": t.seed, "key": t.key, "run_id": s.run_id or run_id, "state": str(s.state),
                     "outcome": str(s.outcome) if s.outcome else None, "attempts": s.attempts,
                     "duration_s": s.duration_s, "reason": s.reason or None, **summary})  # fmt: skip
    columns = [*FIRST, *factors, *TRIAL, *(m for m in metrics if m not in factors and m not in TRIAL)]
    return pd.DataFrame(rows, columns=columns)


def output(out: Path | None, fmt: str | None, study: str) -> tuple[Path | None, str]:
    """Where `export` writes (None: CSV on stdout, `--out -`) and in which format: `--format`, else the suffix of
    `--out`, else CSV; the default file is `reports/<study>/trials.<format>`.

    Raises:
        SenetError: a format or suffix other than csv / parquet, the two disagreeing, parquet on stdout, a folder.
    """
    if fmt is not None and fmt not in FORMATS:
        raise SenetError(f"--format: {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    if out is None:
        fmt = fmt or "csv"
        return REPORTS / study / f"trials{FORMATS[fmt]}", fmt
    if str(out) == "-":
        if fmt == "parquet":
            raise SenetError("--out: - (stdout) takes CSV only; allowed for parquet: a file path")
        return None, "csv"
    suffix = out.suffix.lower()
    by_suffix = {v: k for k, v in FORMATS.items()}
    if suffix and suffix not in by_suffix:
        raise SenetError(f"--out: {out} ends in {out.suffix}; allowed: a .csv or .parquet path, or - for stdout")
    if suffix and fmt is not None and by_suffix[suffix] != fmt:
        raise SenetError(f"--out: {out} ends in {out.suffix} but --format is {fmt}; allowed: a {FORMATS[fmt]} path")
    fmt = by_suffix.get(suffix) or fmt or "csv"
    path = out if suffix else out.with_name(out.name + FORMATS[fmt])
    if path.is_dir():
        raise SenetError(f"--out: {path} is a folder; allowed: a file path, e.g. {path / ('trials' + FORMATS[fmt])}")
    return path, fmt


def write_frame(frame: pd.DataFrame, path: Path | None, fmt: str) -> None:
    """`frame` to `path` in `fmt` (None: CSV on stdout), through a temp file in the same folder renamed over the
    path: a failure leaves no half-written file."""
    if path is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
        return
    if path.parent.exists() and not path.parent.is_dir():
        raise SenetError(f"--out: cannot write {path} ({path.parent} is a file)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SenetError(f"--out: cannot write {path} ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "parquet":
                frame.to_parquet(f, engine="pyarrow", index=False)
            else:
                f.write(frame.to_csv(index=False, lineterminator="\n").encode())
        os.replace(tmp, path)
    except OSError as err:
        raise SenetError(f"--out: cannot write {path} ({err.strerror or err})") from None
    except ValueError as err:  # pyarrow's ArrowInvalid: a column parquet cannot store
        raise SenetError(f"--format: parquet cannot store this study's columns ({err}); allowed: csv") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def study_analysis(spec: StudySpec, opts: ReadOptions) -> Analysis:
    """What `report` computes for `spec`, as objects: per table (one per study with levels of its own) its rows
    (`Row`: the level, its test / validation errors as `Summary`, its `Comparison` with its reference: the per-seed
    differences, the model's estimate with its simultaneous interval and p-value, the verdict), its model and power,
    and the report's SE-vs-no-SE contrasts.

    Raises:
        SenetError: an unreachable tracking store, or no runs of the study in it.
    """
    from ablations.reporting.report import analysed

    return analysed(spec, opts, "analysis", spec.name)[1]


def read_options(
    results: str | Path = "results",
    storage: str | None = None,
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    max_retries: int = 1,
) -> ReadOptions:
    """The CLI's reading options from a notebook's arguments: `storage` defaults to `$SENET_ABLATE_STORAGE`, as on
    the command line."""
    from ablations.paths import STORAGE_ENV

    return ReadOptions(Path(results), storage or os.environ.get(STORAGE_ENV), tracking_uri, overrides, device,
                       max_retries)  # fmt: skip
