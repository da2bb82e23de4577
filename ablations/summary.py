"""A plain per-configuration table of a study's finished runs, read back from MLflow (mean ± std over seeds)."""

from __future__ import annotations

import pandas as pd

from ablations.tracking import T, Tracker


def study_runs(tracker: Tracker, keys: set[str]) -> pd.DataFrame:
    """Every finished child run, in any study's experiment, whose trial key is one of `keys`."""
    runs = tracker.runs_frame(f"tags.`{T}role` = 'trial' and attributes.status = 'FINISHED'")
    if runs.empty:
        return runs
    runs = runs[runs[f"tags.{T}trial_key"].isin(keys)]
    # A trial has one FINISHED run; if a retry also finished (e.g. a stale worker came back), keep the first.
    return runs.sort_values("start_time").drop_duplicates(f"tags.{T}trial_key")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per label: seeds finished and diverged, test and final-validation top-1 error as mean ± std, time."""
    if runs.empty:
        return pd.DataFrame(
            columns=["config", "seeds", "diverged", "test top-1 err %", "val top-1 err %", "time/run s"]
        )
    rows = []
    for label, g in runs.groupby(f"tags.{T}label", sort=True):
        ok = g[g[f"tags.{T}outcome"] == "finished"]
        rows.append(
            {
                "config": label,
                "seeds": len(ok),
                "diverged": int((g[f"tags.{T}outcome"] == "diverged").sum()),
                "test top-1 err %": _pm(ok["metrics.test_top1_err"]),
                "val top-1 err %": _pm(ok["metrics.final_val_top1_err"]),
                "time/run s": f"{ok['metrics.train_time_s'].mean():.0f}" if len(ok) else "—",
            }
        )
    return pd.DataFrame(rows)


def _pm(values: pd.Series) -> str:
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (1 seed)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
