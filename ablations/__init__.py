"""ablations: the senet-ablate experiment harness (specs, data, training, sweeps, tracking, reports, CLI), and its
results for notebooks: `results`, `analysis` and `studies` (each imports what it needs when called)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ablations.reporting.analysis import Analysis

__all__ = ["analysis", "results", "studies"]


def results(
    study: str,
    results: str | Path = "results",
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """One row per trial of `study`, the frame `senet-ablate export` writes: study, level, one column per factor,
    seed, key, MLflow run id, state, outcome, attempts, wall time (s), last failure, and every summary metric.

    Args:
        study: a shipped study, a spec file, or the name of a study run from a file.
        results: the results folder the sweep wrote (`--results`).
        storage: the ledger URL (`--storage`; default `$SENET_ABLATE_STORAGE`, else `ledger.db` in `results`).
        tracking_uri: the MLflow store (`--tracking-uri`), read only for results the ledger lacks.
        overrides: the sweep's `--set` values (default: as the ledger recorded them).
        device: what `auto` resolved to in the sweep (default: as the ledger recorded it).

    Raises:
        SenetError: no ledger there, or no trials of the study in it (naming the studies it holds).
    """
    from ablations.reporting.export import read_options, recorded_spec, trial_frame

    opts = read_options(results, storage, tracking_uri, overrides, device)
    return trial_frame(recorded_spec(study, opts), opts)


def analysis(
    study: str,
    results: str | Path = "results",
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
) -> Analysis:
    """What `senet-ablate report` computes, as objects (`ablations.reporting.analysis`): `.tables`, one per study
    with levels of its own, each with `.rows` (a `Row` per level: `.level`, `.top1` / `.top5` / `.val1` as
    `Summary` with mean, std and 95% interval, `.comparison` with its reference: `.pair` (per-seed differences),
    `.estimate` (the model's Δ, simultaneous interval `.lo`/`.hi`, `.p_adjusted`, one-sided `.lo1`/`.hi1`,
    `.bound`, `.point_p(delta)`), `.fit`, `.verdict`, `.correlation`; `.paper_p`), `.fit` (the family's model:
    one-way or blocked, seed F-test, critical value), `.power` (MDE at that critical value, `.seeds_for(e)`,
    `.seeds_range(e)`) and `.agreement` with the paper; and `.contrasts`, the SE-vs-no-SE comparisons.
    `ablations.reporting.frames.levels_frame(a)` gives the rows as the report's `summary.csv` frame. Arguments as
    for `results`; the runs are read from MLflow."""
    from ablations.reporting.export import read_options, recorded_spec, study_analysis

    opts = read_options(results, storage, tracking_uri, overrides, device)
    return study_analysis(recorded_spec(study, opts), opts)


def studies(results: str | Path = "results", *, storage: str | None = None) -> pd.DataFrame:
    """The studies a results folder's ledger holds (`senet-ablate status --results DIR`): one row each with its
    last sweep's trial count, done / running / failed / pending counts, when that sweep started (UTC) and the
    bytes its trial folders take."""
    import pandas as pd

    from ablations.outcomes import Standing
    from ablations.reporting.export import read_options
    from ablations.sweep.clean import disk_use
    from ablations.sweep.status import recorded_studies

    opts = read_options(results, storage)
    rows = []
    for r in recorded_studies(opts.storage_url):
        c = r.counts
        rows.append({"study": r.name, "trials": len(r.standing), **{str(k): c.get(k, 0) for k in Standing},
                     "updated": pd.to_datetime(r.updated, unit="s", utc=True) if r.updated else pd.NaT,
                     "disk_bytes": disk_use(opts.results, r.standing.items()).total})  # fmt: skip
    return pd.DataFrame(rows)
